//! Choosing where tensors live: `--device cpu | vulkan[:N] | cuda[:N]`.
//!
//! The CPU backend (burn's `flex`) is always built. The GPU backends are cargo features, built
//! only when asked for (`--features vulkan`, `--features cuda`), because they triple the build
//! time and `cuda`'s build script needs to download an LLVM bundle.

use anyhow::{Result, bail};
use burn::tensor::Device;

/// A device and the name recorded in result files.
#[derive(Debug, Clone)]
pub struct Backend {
    pub device: Device,
    pub name: String,
}

impl Backend {
    pub fn cpu() -> Self {
        Self {
            device: Device::flex(),
            name: "cpu (burn flex)".to_string(),
        }
    }

    /// Whether tensors live in host memory (burn's flex backend).
    pub fn is_cpu(&self) -> bool {
        self.device == Device::flex()
    }

    /// Parses a `--device` value.
    pub fn parse(spec: &str) -> Result<Self> {
        let (kind, index) = match spec.split_once(':') {
            Some((kind, index)) => {
                let index: usize = index.parse().map_err(|_| {
                    anyhow::anyhow!("--device {spec}: the part after ':' must be a GPU number, e.g. vulkan:0")
                })?;
                (kind, Some(index))
            }
            None => (spec, None),
        };
        match kind.to_ascii_lowercase().as_str() {
            "cpu" | "flex" => Ok(Self::cpu()),
            "vulkan" => vulkan(index),
            "cuda" => cuda(index),
            other => bail!("--device {other} is unknown: use cpu, vulkan[:N] or cuda[:N]"),
        }
    }
}

#[cfg(feature = "vulkan")]
fn vulkan(index: Option<usize>) -> Result<Backend> {
    use burn::tensor::DeviceKind;
    let kind = index.map_or(DeviceKind::DefaultDevice, DeviceKind::DiscreteGpu);
    let name = format!("vulkan ({kind:?})");
    Ok(Backend {
        device: Device::vulkan(kind),
        name,
    })
}

#[cfg(not(feature = "vulkan"))]
fn vulkan(_index: Option<usize>) -> Result<Backend> {
    bail!(
        "this pnn was built without GPU support: rebuild with `cargo build --release --features vulkan` to use --device vulkan"
    )
}

#[cfg(feature = "cuda")]
fn cuda(index: Option<usize>) -> Result<Backend> {
    let device = match index {
        Some(i) => Device::cuda(i),
        None => Device::cuda(burn::tensor::DeviceIndex::Default),
    };
    Ok(Backend {
        device,
        name: format!("cuda:{}", index.unwrap_or(0)),
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda(_index: Option<usize>) -> Result<Backend> {
    bail!(
        "this pnn was built without CUDA support: rebuild with `cargo build --release --features cuda` \
         (its build downloads an LLVM bundle, so it needs network access) to use --device cuda"
    )
}
