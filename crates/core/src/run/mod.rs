//! Layer 8: the jobs — the training loop, inference for evaluation, held-out loss and the
//! spectral analysis of ΔW.
pub mod analyze;
pub mod evaluate;
pub mod infer;
pub mod spectrum;
pub mod train;
