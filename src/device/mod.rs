//! Choosing where tensors live: `--device cpu | vulkan[:N] | cuda[:N] | wgpu[:N]`, or a
//! comma-separated list of GPUs of one kind (`--device cuda:0,cuda:1`, or `--ngpu 2`) for
//! data-parallel training (`train/step.rs`).
//!
//! `auto` (the default) takes a GPU when the binary was built with a GPU feature and a GPU
//! answers, and the CPU otherwise; the choice is printed and recorded in every result file.
//!
//! The CPU backend (burn's `flex`) is always built. The GPU backends are cargo features, built
//! only when asked for (`--features vulkan`, `--features cuda`, `--features wgpu`), because
//! they triple the build time, and `cuda` needs LLVM, which `scripts/setup-cuda-build.sh` installs.

mod cuda;

use anyhow::{Result, bail};
use burn::tensor::Device;

use cuda::{cuda, cuda_needs};
pub use cuda::{find_libdevice, locate_libdevice, use_installed_libdevice};

/// A device and the name recorded in result files.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Where the model lives, the optimizer steps and the test set is evaluated.
    pub device: Device,
    /// Further devices of a data-parallel run, each computing its share of every training batch
    /// (empty for a run on one device).
    pub replicas: Vec<Device>,
    pub name: String,
}

impl Backend {
    fn one(device: Device, name: String) -> Self {
        Self {
            device,
            replicas: Vec::new(),
            name,
        }
    }

    pub fn cpu() -> Self {
        Self::one(Device::flex(), "cpu (burn flex)".to_string())
    }

    /// Every device a training step runs on: the model's first.
    pub fn devices(&self) -> Vec<Device> {
        std::iter::once(self.device.clone())
            .chain(self.replicas.iter().cloned())
            .collect()
    }

    /// Parses a `--device` value together with `--ngpu`: `ngpu` > 1 asks for GPUs 0 to ngpu-1
    /// of the kind `spec` names (the original authors' flag; the reproduction has none).
    pub fn parse_with_count(spec: &str, ngpu: usize) -> Result<Self> {
        if ngpu <= 1 {
            return Self::parse(spec);
        }
        let kind = spec.to_ascii_lowercase();
        if !matches!(kind.as_str(), "vulkan" | "cuda" | "wgpu") {
            bail!(
                "--ngpu {ngpu} needs --device vulkan, cuda or wgpu (it then trains on GPUs 0 to {}), not --device \
                 {spec}; or list the GPUs instead, e.g. --device vulkan:0,vulkan:2",
                ngpu - 1
            );
        }
        let list: Vec<String> = (0..ngpu).map(|i| format!("{kind}:{i}")).collect();
        Self::parse(&list.join(","))
    }

    /// Parses a `--device` value: one device, or a comma-separated list of GPUs of one kind
    /// to train on in data parallel.
    pub fn parse(spec: &str) -> Result<Self> {
        let specs: Vec<&str> = spec.split(',').map(str::trim).collect();
        if specs.len() == 1 {
            return Self::parse_one(spec);
        }
        let kind = |s: &str| s.split(':').next().unwrap_or("").to_ascii_lowercase();
        if specs
            .iter()
            .any(|s| matches!(kind(s).as_str(), "cpu" | "flex" | "auto" | ""))
        {
            bail!(
                "--device {spec}: a list of devices is for data-parallel training on several GPUs \
                 (e.g. vulkan:0,vulkan:1); the CPU is one device and already uses every core"
            );
        }
        if specs.iter().any(|s| kind(s) != kind(specs[0])) {
            bail!(
                "--device {spec}: the GPUs of a data-parallel run must be of one kind (all vulkan, all cuda or all wgpu)"
            );
        }
        let mut backends: Vec<Backend> = Vec::new();
        for one in &specs {
            let backend = Self::parse_one(one)?;
            if backends.iter().any(|b| b.device == backend.device) {
                bail!("--device {spec}: {one} is listed twice; name each GPU once");
            }
            backends.push(backend);
        }
        let names: Vec<&str> = backends.iter().map(|b| b.name.as_str()).collect();
        let name = format!("{}, data parallel over {} devices", names.join(" + "), backends.len());
        let mut devices = backends.into_iter().map(|b| b.device);
        let device = devices.next().expect("a list of two or more");
        Ok(Self {
            device,
            replicas: devices.collect(),
            name,
        })
    }

    /// Whether tensors live in host memory (burn's flex backend).
    pub fn is_cpu(&self) -> bool {
        self.device == Device::flex()
    }

    /// Parses one device of a `--device` value.
    fn parse_one(spec: &str) -> Result<Self> {
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
            "auto" if index.is_none() => Ok(Self::auto()),
            "cpu" | "flex" => Ok(Self::cpu()),
            "vulkan" => opened(vulkan(index)?, "Vulkan", || {
                "the Vulkan loader (libvulkan1) and the GPU driver's Vulkan support".to_string()
            }),
            "cuda" => opened(cuda(index)?, "CUDA", cuda_needs),
            "wgpu" => opened(wgpu(index)?, "wgpu", || {
                "a graphics driver with Vulkan, Metal or DX12 (on Linux: libvulkan1 and the driver's Vulkan support)"
                    .to_string()
            }),
            other => bail!("--device {other} is unknown: use auto, cpu, vulkan[:N], cuda[:N] or wgpu[:N]"),
        }
    }

    /// The first GPU that answers a small computation (CUDA, then a discrete, then an
    /// integrated Vulkan GPU, then the same through wgpu's WGSL; a CPU-emulated device such as
    /// Mesa's llvmpipe is never taken: `--device wgpu` asks for it), or the CPU.
    pub fn auto() -> Self {
        let mut candidates: Vec<Box<dyn Fn() -> Result<Backend>>> = Vec::new();
        if cfg!(feature = "cuda") {
            candidates.push(Box::new(|| cuda(None)));
        }
        for api in [WgpuApi::Vulkan, WgpuApi::Wgsl].into_iter().filter(|api| api.built()) {
            for adapter in [Adapter::FirstDiscrete, Adapter::FirstIntegrated] {
                candidates.push(Box::new(move || wgpu_backed(api, adapter)));
            }
        }
        for candidate in candidates {
            if let Ok(backend) = candidate()
                && answers(&backend.device)
            {
                return backend;
            }
        }
        Self::cpu()
    }
}

/// The backend, if its device answers; else an error that names what is missing (opening a GPU
/// that is not there panics inside the runtime, on its own thread).
fn opened(backend: Backend, api: &str, needs: impl FnOnce() -> String) -> Result<Backend> {
    if answers(&backend.device) {
        return Ok(backend);
    }
    bail!(
        "--device {}: no {api} GPU could be opened on this machine. A GPU run needs {}; \
         `--device cpu` runs without one (docs/gpu.md says what a GPU machine needs)",
        backend.name,
        needs()
    )
}

/// Reads a one-value tensor back to the host. Where the device's work failed (on a GPU: out of
/// memory, or a tensor over the largest buffer the driver allocates: 2 GiB through Vulkan) the
/// error names the cause and what to try, where `into_scalar` would panic.
pub fn read_scalar<K: burn::tensor::kind::Basic, E: burn::tensor::Element>(
    t: burn::tensor::Tensor<1, K>,
    what: &str,
) -> Result<E> {
    t.try_into_scalar::<E>()
        .map_err(|e| anyhow::anyhow!(device_failure(what, &e.to_string())))
}

/// The message for a device's failed work: `error` is the runtime's report, many lines of
/// "Caused by:" and skipped kernels, whose last informative line is the root cause.
pub fn device_failure(what: &str, error: &str) -> String {
    let cause = error
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !l.contains("backtrace") && !l.ends_with(':'))
        .unwrap_or("no cause given");
    format!(
        "the device could not compute the {what} ({cause}). On a GPU this is usually memory: the step needs \
         more than the GPU has, or a tensor larger than the driver's largest buffer (2 GiB through Vulkan). \
         Try a smaller --batch-size, fewer --nmasks or --nfilters, or --device cpu"
    )
}

/// Whether a device computes 1 + 2 (opening a GPU that is not there panics inside the runtime).
pub fn answers(device: &Device) -> bool {
    let device = device.clone();
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(move || {
        let t = burn::tensor::Tensor::<1>::from_data(burn::tensor::TensorData::new(vec![1.0f32, 2.0], [2]), &device);
        t.sum().into_scalar::<f32>()
    });
    std::panic::set_hook(hook);
    matches!(result, Ok(v) if v == 3.0)
}

/// Whether burn tunes its GPU kernels (convolutions, matrix products, reductions) before their
/// first use: part of `vulkan` and `cuda` (a step 3.4-3.9x faster on an NVIDIA H200,
/// docs/speed/gpu-h200-autotune.md), and of `wgpu` only with `gpu-autotune`, since the tests on a
/// CPU Vulkan driver would spend most of their time tuning.
pub const AUTOTUNE: bool = cfg!(any(feature = "gpu-autotune", feature = "vulkan", feature = "cuda"));

/// Appended to a GPU backend's name (so recorded in every result file): whether burn tunes its
/// GPU kernels, which changes a GPU run's speed several times over.
#[allow(dead_code)] // only the GPU builds name a GPU backend
const GPU_KERNELS: &str = if AUTOTUNE { ", burn autotune" } else { "" };

/// Printed at the start of a GPU run of an autotuning build: its first steps look stuck.
pub const AUTOTUNE_NOTE: Option<&str> = if AUTOTUNE {
    Some(
        "burn tunes each GPU kernel shape before its first use: the first steps of a fresh run take minutes \
         (2-3 on an NVIDIA H200); cubecl caches the choices, in target/environment/ inside a cargo project, \
         else in ~/.cache/cubecl",
    )
} else {
    None
};

/// Which adapter of a wgpu-backed API to open.
#[allow(dead_code)] // only the GPU builds construct some of these
#[derive(Clone, Copy)]
enum Adapter {
    /// `--device vulkan:N` (the N-th discrete GPU), or without a number the API's own choice.
    Numbered(Option<usize>),
    /// For `auto`: the first discrete GPU, then the first integrated one.
    FirstDiscrete,
    FirstIntegrated,
}

/// The two ways pnn reaches burn's wgpu backend.
#[derive(Clone, Copy, PartialEq)]
enum WgpuApi {
    /// `--features vulkan`: pinned to Vulkan, with cubecl's SPIR-V compiler.
    Vulkan,
    /// `--features wgpu`: WGSL shaders on whatever API the machine has. Its own choice of adapter
    /// is a GPU where there is one, else a CPU-emulated one (Mesa's llvmpipe), which is how the
    /// GPU tests run on a machine without a GPU.
    Wgsl,
}

impl WgpuApi {
    /// The cargo feature, and the `--device` kind.
    fn feature(self) -> &'static str {
        match self {
            Self::Vulkan => "vulkan",
            Self::Wgsl => "wgpu",
        }
    }

    fn built(self) -> bool {
        match self {
            Self::Vulkan => cfg!(feature = "vulkan"),
            Self::Wgsl => cfg!(feature = "wgpu"),
        }
    }
}

fn vulkan(index: Option<usize>) -> Result<Backend> {
    wgpu_backed(WgpuApi::Vulkan, Adapter::Numbered(index))
}

fn wgpu(index: Option<usize>) -> Result<Backend> {
    wgpu_backed(WgpuApi::Wgsl, Adapter::Numbered(index))
}

/// A device of burn's wgpu backend through `api`, or why this binary has none.
#[cfg_attr(not(any(feature = "vulkan", feature = "wgpu")), allow(unused_variables))]
fn wgpu_backed(api: WgpuApi, adapter: Adapter) -> Result<Backend> {
    let feature = api.feature();
    if !api.built() {
        bail!(
            "this pnn was built without {feature} support: rebuild with `cargo build --release --features {feature}` \
             to use --device {feature}"
        );
    }
    #[cfg(any(feature = "vulkan", feature = "wgpu"))]
    {
        use burn::tensor::DeviceKind;
        let kind = match adapter {
            Adapter::Numbered(index) => index.map_or(DeviceKind::DefaultDevice, DeviceKind::DiscreteGpu),
            Adapter::FirstDiscrete => DeviceKind::DiscreteGpu(0),
            Adapter::FirstIntegrated => DeviceKind::IntegratedGpu(0),
        };
        let shaders = if api == WgpuApi::Wgsl { ", WGSL" } else { "" };
        let name = format!("{feature} ({kind:?}{shaders}){GPU_KERNELS}");
        #[cfg(feature = "vulkan")]
        if api == WgpuApi::Vulkan {
            return Ok(Backend::one(Device::vulkan(kind), name));
        }
        #[cfg(feature = "wgpu")]
        if api == WgpuApi::Wgsl {
            return Ok(Backend::one(Device::wgpu(kind), name));
        }
    }
    unreachable!("{feature} is built in (checked above)")
}
