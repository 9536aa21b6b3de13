//! Device names as a config writes them (`cpu`, `cuda`, `cuda:N`), and what this build
//! of the engine can open. The CPU build (the addon) opens `cpu`; the sidecar built with
//! the `cuda` feature (scripts/build-cuda-sidecar.sh) also opens `cuda:N`.
use crate::base::error::{Error, Result};
use candle_core::Device;

/// `cpu` → None, `cuda` → Some(0), `cuda:N` → Some(N); anything else is a config error.
pub fn parse(name: &str) -> Result<Option<usize>> {
    match name {
        "cpu" => Ok(None),
        "cuda" => Ok(Some(0)),
        _ => name.strip_prefix("cuda:").and_then(|n| n.parse().ok()).map(Some).ok_or_else(|| {
            Error::config("train.device", format!("unknown device `{name}` (hint: \"cpu\", \"cuda\" or \"cuda:N\")"))
        }),
    }
}

/// The device kinds this build can run on.
pub fn available() -> Vec<&'static str> {
    if cfg!(feature = "cuda") {
        vec!["cpu", "cuda"]
    } else {
        vec!["cpu"]
    }
}

/// Open a device by its config name.
pub fn open(name: &str) -> Result<Device> {
    match parse(name)? {
        None => Ok(Device::Cpu),
        Some(ordinal) if cfg!(feature = "cuda") => Device::new_cuda(ordinal)
            .map_err(|e| Error::config("train.device", format!("cannot open `{name}`: {e} (hint: is the NVIDIA driver loaded and the ordinal below the GPU count? nvidia-smi lists them)"))),
        Some(_) => Err(Error::config(
            "train.device",
            format!("`{name}`: this build of the engine has no CUDA (hint: CUDA runs go through the sidecar built by scripts/build-cuda-sidecar.sh; set LORALAB_SIDECAR to its path)"),
        )),
    }
}

/// Open a device and read a small tensor back from it: 6 when the device computes (a
/// worker's preflight of a GPU slot, before it takes a job it would fail).
pub fn probe(name: &str) -> Result<f64> {
    let dev = open(name)?;
    let sum = candle_core::Tensor::arange(0f32, 4f32, &dev)?.sum_all()?.to_scalar::<f32>()?;
    Ok(sum as f64)
}
