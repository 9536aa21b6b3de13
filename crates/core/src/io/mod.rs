//! Layer 5: every file format loralab reads or writes — Hugging Face and PEFT directories,
//! GGUF, tokenizers, chat templates, checkpoints with their manifests, and the run
//! directory (docs/run-directory.md), which lives in `rundir` alone.
pub mod chat;
pub mod checkpoint;
pub mod export;
pub mod gguf;
pub mod rundir;
pub mod tokenizer;
