//! `--device cuda[:N]`: opening a CUDA device, and what a CUDA run needs from the machine.
//!
//! burn's CUDA backend compiles kernels to PTX with LLVM inside pnn and loads the NVIDIA driver's
//! library when a run starts, so a `--features cuda` binary needs no CUDA toolkit, with one
//! exception: libdevice, the NVIDIA math library that kernels calling exp, tanh or erf are linked
//! with, read from `$CUDA_PATH/nvvm/libdevice/libdevice.10.bc` (or a toolkit in `/usr/local/cuda`
//! and the like). `scripts/setup-cuda-build.sh` installs a copy from the Python package registry;
//! [`use_installed_libdevice`] points CUDA_PATH at it when nothing else provides one.

use std::path::{Path, PathBuf};

use anyhow::Result;
#[cfg(not(feature = "cuda"))]
use anyhow::bail;

use super::Backend;

/// Where burn's CUDA backend looks for a toolkit when CUDA_PATH is unset.
const TOOLKIT_ROOTS: [&str; 4] = ["/usr/local/cuda", "/opt/cuda", "/usr/lib/cuda", "/usr"];

/// libdevice under a toolkit root.
fn libdevice_in(root: &Path) -> PathBuf {
    root.join("nvvm").join("libdevice").join("libdevice.10.bc")
}

/// The toolkit root `scripts/setup-cuda-build.sh` fills: `$PNN_CUDA_TOOLS`, else
/// `$XDG_DATA_HOME/pnn-cuda` (`~/.local/share/pnn-cuda`), with the wheel's folder inside.
fn installed_root() -> Option<PathBuf> {
    let tools = match std::env::var_os("PNN_CUDA_TOOLS") {
        Some(dir) => PathBuf::from(dir),
        None => match std::env::var_os("XDG_DATA_HOME") {
            Some(data) => PathBuf::from(data).join("pnn-cuda"),
            None => PathBuf::from(std::env::var_os("HOME")?).join(".local/share/pnn-cuda"),
        },
    };
    Some(tools.join("cuda/nvidia/cuda_nvcc"))
}

/// The libdevice a CUDA run would use: CUDA_PATH's, else an installed toolkit's, else the copy
/// of `scripts/setup-cuda-build.sh`; `None` where there is none.
pub fn find_libdevice() -> Option<PathBuf> {
    locate_libdevice(
        std::env::var_os("CUDA_PATH").map(PathBuf::from),
        &TOOLKIT_ROOTS.map(PathBuf::from),
        installed_root(),
    )
}

/// [`find_libdevice`] with the environment's answers as arguments: `cuda_path`, when set, is the
/// only place burn's backend looks; else the first of `toolkits` holding one, else `installed`
/// (the folder that [`use_installed_libdevice`] hands on as CUDA_PATH).
pub fn locate_libdevice(
    cuda_path: Option<PathBuf>,
    toolkits: &[PathBuf],
    installed: Option<PathBuf>,
) -> Option<PathBuf> {
    if let Some(root) = cuda_path {
        let path = libdevice_in(&root);
        return path.is_file().then_some(path);
    }
    toolkits
        .iter()
        .chain(installed.as_ref())
        .map(|root| libdevice_in(root))
        .find(|path| path.is_file())
}

/// Points CUDA_PATH at the libdevice of `scripts/setup-cuda-build.sh` when CUDA_PATH is unset
/// and no toolkit is installed, so that a CUDA run finds it without the user exporting anything.
/// Does nothing in a build without CUDA.
///
/// # Safety
/// Changes the process environment: call it before any other thread starts (first in `main`).
pub unsafe fn use_installed_libdevice() {
    if !cfg!(feature = "cuda") || std::env::var_os("CUDA_PATH").is_some() {
        return;
    }
    // The lookup a run makes; only where it ends at the installed copy does CUDA_PATH need it.
    if let (Some(found), Some(root)) = (find_libdevice(), installed_root())
        && found == libdevice_in(&root)
    {
        // SAFETY: the caller guarantees no other thread reads or writes the environment.
        unsafe { std::env::set_var("CUDA_PATH", root) };
    }
}

/// What a CUDA run needs, naming what this machine lacks of it.
pub(super) fn cuda_needs() -> String {
    let driver = if libcuda_loads() {
        "the NVIDIA driver (its libcuda.so.1 loads here, but no CUDA device answered: is a GPU visible to \
         this process, e.g. through CUDA_VISIBLE_DEVICES?)"
    } else {
        "the NVIDIA driver (its libcuda.so.1 does not load here)"
    };
    match find_libdevice() {
        Some(path) => format!("{driver}; libdevice was found at {}", path.display()),
        None => format!(
            "{driver}, and libdevice, which is missing too: run scripts/setup-cuda-build.sh, or set CUDA_PATH \
             to a CUDA toolkit holding nvvm/libdevice/libdevice.10.bc"
        ),
    }
}

/// Whether the NVIDIA driver's library loads, as cubecl-cuda loads it when a run starts.
fn libcuda_loads() -> bool {
    ["libcuda.so.1", "libcuda.so"].iter().any(|name| {
        // SAFETY: loading the driver's library runs only its initialisers, as any CUDA program
        // does; it is unloaded at once.
        unsafe { libloading::Library::new(name) }.is_ok()
    })
}

#[cfg(feature = "cuda")]
pub(super) fn cuda(index: Option<usize>) -> Result<Backend> {
    use burn::tensor::Device;
    let device = match index {
        Some(i) => Device::cuda(i),
        None => Device::cuda(burn::tensor::DeviceIndex::Default),
    };
    Ok(Backend::one(
        device,
        format!("cuda:{}{}", index.unwrap_or(0), super::GPU_KERNELS),
    ))
}

#[cfg(not(feature = "cuda"))]
pub(super) fn cuda(_index: Option<usize>) -> Result<Backend> {
    bail!(
        "this pnn was built without CUDA support: run scripts/setup-cuda-build.sh once (it installs LLVM and \
         libdevice from the Python package registry), then `cargo build --release --features cuda`, to use \
         --device cuda"
    )
}
