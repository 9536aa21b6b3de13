//! The engine's one error type. Every variant names what failed and where, and its
//! message ends with a hint; the napi binding maps it to a JS Error unchanged.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // --- configuration (raised before any work starts)
    #[error("config {field}: {msg}")]
    Config { field: String, msg: String },

    // --- files and checkpoints
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    #[error(
        "checkpoint {path}: missing tensor {name} (hint: was it written by a run with the same model and method?)"
    )]
    MissingTensor { path: PathBuf, name: String },

    // --- data
    #[error("dataset {path}, row {row}: {msg}")]
    DataRow { path: PathBuf, row: usize, msg: String },

    // --- training
    #[error("step {step}: loss is {value} (not finite); stopped. The last good checkpoint is {last_checkpoint}. Hint: lower method/optim lr, or enable gradient clipping (optim.grad_clip)")]
    NonFinite { step: usize, value: f64, last_checkpoint: String },

    // --- inference
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    // --- wrapped
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    #[error("json error: {0}")]
    Json(#[from] serde_json::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// The text a caught panic carried (for the binding and the sidecar, which answer a panic
/// with an error instead of dying).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

impl Error {
    pub fn config(field: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Config { field: field.into(), msg: msg.into() }
    }
    pub fn file(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        Error::File { path: path.into(), msg: msg.to_string() }
    }
}
