//! loralab-core: the engine. Llama-family model, LoRA, optimizers, the training loop,
//! checkpoints. Reached from Bun through crates/node and from the sidecar.
pub mod analyze;
pub mod chat;
pub mod checkpoint;
pub mod config;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod data;
pub mod device;
pub mod error;
pub mod evaluate;
pub mod gguf;
pub mod infer;
pub mod linear;
pub mod model;
pub mod ops;
pub mod optim;
pub mod rng;
pub mod spectrum;
pub mod train;

pub use candle_core as candle;
pub use config::{config_schema, parse_config, RunConfig};
pub use error::{Error, Result};
pub use train::{run, Event, RunSummary, Sink};
