//! The portable path: each custom op's maths composed from candle's own tensor ops, which
//! candle runs on every device and dtype. It is the production path wherever the kernels do
//! not apply (CUDA without loralab's kernels, bf16 on the CPU), and what the CPU tests force
//! to check the GPU's code path against the CPU kernels.
use candle_core::{Tensor, D};

thread_local! {
    static FORCED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Run `f` with the portable path forced on this thread, even where the kernels would apply.
pub fn with_portable<R>(f: impl FnOnce() -> R) -> R {
    FORCED.with(|c| c.set(true));
    let r = f();
    FORCED.with(|c| c.set(false));
    r
}

/// Whether [`with_portable`] is in force on this thread.
pub fn forced() -> bool {
    FORCED.with(|c| c.get())
}

/// Rotary embedding x·cos + rotate_half(x)·sin.
/// x: (b, h, t, hd); cos, sin: (t, hd)
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let hd = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, hd / 2)?;
    let x2 = x.narrow(D::Minus1, hd / 2, hd / 2)?;
    let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(cos)? + rot.broadcast_mul(sin)?
}

/// RMSNorm x / sqrt(mean(x²) + eps) · w.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let r = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&r)?.broadcast_mul(w)
}

/// Causal softmax of scores·scale: the mask is built on the tensor's device, with no host (t, t) table per call.
pub fn causal_softmax(scores: &Tensor, scale: f64) -> candle_core::Result<Tensor> {
    let (rows, t) = (scores.dim(D::Minus2)?, scores.dim(D::Minus1)?);
    let dev = scores.device();
    // rows may be rep·t (grouped-query heads stacked): row r is query position r mod t
    let i = Tensor::arange(0u32, t as u32, dev)?.reshape((1, t))?.repeat((rows / t, 1))?.reshape((rows, 1))?;
    let j = Tensor::arange(0u32, t as u32, dev)?.reshape((1, t))?;
    let future = j.broadcast_gt(&i)?.broadcast_as(scores.shape())?;
    let s = (scores * scale)?;
    let s = future
        .where_cond(&Tensor::full(f32::NEG_INFINITY, (), dev)?.to_dtype(s.dtype())?.broadcast_as(s.shape())?, &s)?;
    let m = s.max_keepdim(D::Minus1)?.detach();
    let e = s.broadcast_sub(&m)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Masked next-token loss Σ −log p(target)·mask / denom, with targets and mask as tensors.
pub fn masked_loss(logits: &Tensor, targets: &Tensor, mask: &Tensor, denom: f64) -> candle_core::Result<Tensor> {
    let m = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&m)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?; // (n, 1)
    let picked = shifted.gather(&targets.unsqueeze(1)?, 1)?; // (n, 1)
    let nll = (lse - picked)?.squeeze(1)?;
    (nll * mask)?.sum_all()? / denom
}
