//! Layer 0: what every other layer uses — the error type, seeded randomness, devices and the
//! file conventions (what a .gguf is, where a model's tokenizer lives).
pub mod alloc;
pub mod device;
pub mod error;
pub mod formats;
pub mod rng;
