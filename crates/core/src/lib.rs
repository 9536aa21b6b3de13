//! loralab-core: the engine. Llama-family model, LoRA, optimizers, the training loop,
//! checkpoints. Reached from Bun through crates/node and from the sidecar, both through
//! [`api`], the one protocol.
//!
//! Layers, lowest first (layers.toml; `bun scripts/layers.ts` fails on a module that uses
//! one above its own):
//! `base` (error, rng, device, file conventions) → `config` → `nn` (ops, the linear layer,
//! kernel dispatch, the portable path; knows no model) → `model` (Llama, LoRA) → `optim` →
//! `io` (HF, PEFT, GGUF, tokenizers, chat templates, checkpoints, the run directory) →
//! `data` → `run` (train, infer, evaluate, analyze) → `api`.
pub mod api;
pub mod base;
pub mod config;
pub mod data;
pub mod io;
pub mod model;
pub mod nn;
pub mod optim;
pub mod run;

// the paths callers used before the layers had folders
pub use base::{device, error, rng};
pub use io::{chat, checkpoint, export, gguf};
#[cfg(feature = "cuda")]
pub use nn::cuda;
pub use nn::{linear, ops};
pub use run::{analyze, evaluate, infer, spectrum, train};

pub use candle_core as candle;
pub use config::{config_schema, parse_config, RunConfig};
pub use error::{Error, Result};
pub use train::{run, Event, RunSummary, Sink};
