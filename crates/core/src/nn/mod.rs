//! Layer 2: numerics that know no model — candle ops with custom backward passes, the
//! LoRA-aware linear layer, and the dispatch to the CUDA kernels (`cuda`) with the portable
//! candle-op path every device can run (`portable`).
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod linear;
pub mod ops;
pub mod portable;
