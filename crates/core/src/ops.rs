//! Custom ops with an explicit backward, where candle's defaults cost too much or
//! record no gradient. Called by linear.rs and model.rs; each keeps a reference
//! composition of plain tensor ops beside it (tests/ops compare the two).
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor, D};

// ------------------------------------------------------------------ frozen linear

/// y = x·Wᵀ (+ b) with W (and b) frozen. candle's matmul backward computes the
/// gradient of both operands; this op returns only dL/dx, so a frozen weight costs
/// no matmul and no memory in the backward pass (the LoRA promise).
struct FrozenLinear;

fn frozen_matmul_cpu(s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
    let (m, k) = l1.shape().dims2()?;
    let (n, k2) = l2.shape().dims2()?;
    if k != k2 {
        candle_core::bail!("frozen linear: x has {k} features but the weight expects {k2}")
    }
    let wt = l2.transpose(0, 1)?; // (k, n) view of the (n, k) weight, no copy
    let out = s1.matmul(s2, (1, m, n, k), l1, &wt)?;
    Ok((out, Shape::from((m, n))))
}

impl CustomOp2 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        frozen_matmul_cpu(s1, l1, s2, l2)
    }
    fn bwd(&self, _x: &Tensor, w: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(g.matmul(w)?), None))
    }
}

struct FrozenLinearBias;

impl CustomOp3 for FrozenLinearBias {
    fn name(&self) -> &'static str {
        "frozen-linear-bias"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (out, shape) = frozen_matmul_cpu(s1, l1, s2, l2)?;
        let n = shape.dims()[1];
        let (b0, b1) = l3.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("frozen bias must be contiguous".into()))?;
        let out = match (out, s3) {
            (CpuStorage::F32(mut y), CpuStorage::F32(b)) => {
                add_rows(&mut y, &b[b0..b1], n);
                CpuStorage::F32(y)
            }
            (CpuStorage::F64(mut y), CpuStorage::F64(b)) => {
                add_rows(&mut y, &b[b0..b1], n);
                CpuStorage::F64(y)
            }
            _ => candle_core::bail!("frozen linear bias: dtype not supported on CPU (use f32 or f64)"),
        };
        Ok((out, shape))
    }
    fn bwd(
        &self,
        _x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        Ok((Some(g.matmul(w)?), None, None))
    }
}

fn add_rows<T: Copy + std::ops::AddAssign>(y: &mut [T], b: &[T], n: usize) {
    for row in y.chunks_exact_mut(n) {
        for (v, bv) in row.iter_mut().zip(b) {
            *v += *bv;
        }
    }
}

/// x: (n, in), w: (out, in), b: (out) -> (n, out); gradient flows to x only.
pub fn frozen_linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let x = x.contiguous()?;
    match b {
        None => x.apply_op2(w, FrozenLinear),
        Some(b) => x.apply_op3(w, b, FrozenLinearBias),
    }
}

// ------------------------------------------------------------------ rms norm

/// y = x / sqrt(mean(x²) + eps) · w over the last dim. candle's fused rms_norm has
/// no backward; the composition allocates six activations. This op is fused forward
/// and explicit backward; the weight gradient is skipped when the weight is frozen.
struct RmsNorm {
    eps: f64,
    weight_grad: bool,
}

fn rms_fwd<T: num_like::Float>(x: &[T], w: &[T], d: usize, eps: f64) -> Vec<T> {
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks_exact(d) {
        let ms = row.iter().map(|v| v.to_f64() * v.to_f64()).sum::<f64>() / d as f64;
        let r = T::from_f64(1.0 / (ms + eps).sqrt());
        y.extend(row.iter().zip(w).map(|(&v, &wv)| v * r * wv));
    }
    y
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = *l1.dims().last().unwrap_or(&1);
        let (x0, x1) = l1.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("rms-norm: x must be contiguous".into()))?;
        let (w0, w1) = l2.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("rms-norm: weight must be contiguous".into()))?;
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(w)) => CpuStorage::F32(rms_fwd(&x[x0..x1], &w[w0..w1], d, self.eps)),
            (CpuStorage::F64(x), CpuStorage::F64(w)) => CpuStorage::F64(rms_fwd(&x[x0..x1], &w[w0..w1], d, self.eps)),
            _ => candle_core::bail!("rms-norm: dtype not supported on CPU (use f32 or f64)"),
        };
        Ok((out, l1.shape().clone()))
    }
    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // r = (mean(x²)+eps)^-½ ; dx = r·(g·w) − x·r³·mean((g·w)·x) ; dw = Σ_rows g·x·r
        let r = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?.sqrt()?.recip()?;
        let gw = g.broadcast_mul(w)?;
        let dot = (&gw * x)?.mean_keepdim(D::Minus1)?;
        let dx = (gw.broadcast_mul(&r)? - x.broadcast_mul(&(r.powf(3.0)? * dot)?)?)?;
        let dw = if self.weight_grad {
            let xr = x.broadcast_mul(&r)?;
            let lead = xr.rank() - 1;
            Some((g * xr)?.flatten_to(lead.saturating_sub(1))?.sum(0)?)
        } else {
            None
        };
        Ok((Some(dx), dw))
    }
}

/// x: (.., d), w: (d) -> (.., d)
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, weight_grad: bool) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op2(w, RmsNorm { eps, weight_grad })
}

/// The same maths as `rms_norm` from plain tensor ops: the reference the op is tested against.
pub fn rms_norm_reference(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let r = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&r)?.broadcast_mul(w)
}

/// Small numeric trait so the CPU kernels serve f32 and f64.
pub mod num_like {
    pub trait Float: Copy + std::ops::Mul<Output = Self> {
        fn to_f64(self) -> f64;
        fn from_f64(v: f64) -> Self;
    }
    impl Float for f32 {
        fn to_f64(self) -> f64 {
            self as f64
        }
        fn from_f64(v: f64) -> Self {
            v as f32
        }
    }
    impl Float for f64 {
        fn to_f64(self) -> f64 {
            self
        }
        fn from_f64(v: f64) -> Self {
            v
        }
    }
}
