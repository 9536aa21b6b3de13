//! Custom ops with an explicit backward, where candle's defaults cost too much or
//! record no gradient. Called by linear.rs and model.rs; each keeps a reference
//! composition of plain tensor ops beside it (tests/ops compare the two).
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor, D};

// ------------------------------------------------------------------ CPU kernels or portable path

/// Whether the CPU kernels below run for this tensor (CPU, f32 or f64). Anywhere else
/// (CUDA, or bf16 mixed precision) each op takes its portable path: the same maths from
/// candle's own tensor ops, which candle runs on every device, with softmax, norms and the
/// loss computed in f32 whatever the activation dtype. The CPU tests run the portable path
/// too (in bf16, and in f32 against the fused ops: tests/portable.rs).
pub fn cpu_kernels_apply(x: &Tensor) -> bool {
    x.device().is_cpu()
        && matches!(x.dtype(), candle_core::DType::F32 | candle_core::DType::F64)
        && !crate::nn::portable::forced()
}

/// `w` in `x`'s dtype (a trained weight is an f32 master under bf16 activations; the cast
/// is differentiable, so its gradient reaches the master in f32).
fn in_dtype_of(w: &Tensor, x: &Tensor) -> candle_core::Result<Tensor> {
    w.to_dtype(x.dtype())
}

/// Run `f` in f32 on a lower-precision tensor and cast the result back.
fn in_f32(x: &Tensor, f: impl FnOnce(&Tensor) -> candle_core::Result<Tensor>) -> candle_core::Result<Tensor> {
    use candle_core::DType::{F32, F64};
    if matches!(x.dtype(), F32 | F64) {
        f(x)
    } else {
        f(&x.to_dtype(F32)?)?.to_dtype(x.dtype())
    }
}

// ------------------------------------------------------------------ shared CPU plumbing

use num_like::Float;
use rayon::prelude::*;
use std::sync::Arc;

fn contiguous<'a, T>(v: &'a [T], l: &Layout, what: &str) -> candle_core::Result<&'a [T]> {
    let (a, b) =
        l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg(format!("{what}: input must be contiguous")))?;
    Ok(&v[a..b])
}

/// A fresh output buffer of `n` elements filled in parallel by `fill(chunk_index, chunk)`
/// over chunks of `chunk` elements, without zeroing it first (every element is written).
fn par_fill<T: Send>(n: usize, chunk: usize, fill: impl Fn(usize, &mut [std::mem::MaybeUninit<T>]) + Sync) -> Vec<T> {
    let mut y: Vec<T> = Vec::with_capacity(n);
    y.spare_capacity_mut()[..n].par_chunks_mut(chunk.max(1)).enumerate().for_each(|(c, out)| fill(c, out));
    // SAFETY: `fill` wrote every element of the first n (each kernel below writes its whole chunk).
    unsafe { y.set_len(n) };
    y
}

/// Apply a row kernel `f(row_index, input_row, output_row)` over rows of `d` elements, in
/// parallel. The kernel must write every element of its output row.
fn map_rows<T: Float + Send + Sync + Default>(x: &[T], d: usize, f: impl Fn(usize, &[T], &mut [T]) + Sync) -> Vec<T> {
    par_fill(x.len(), d, |r, out| {
        // SAFETY: MaybeUninit<T> has T's layout; T is Copy (no drop), and the kernel writes all of it.
        let out = unsafe { &mut *(out as *mut [std::mem::MaybeUninit<T>] as *mut [T]) };
        f(r, &x[r * d..(r + 1) * d], out)
    })
}

macro_rules! cpu_dispatch {
    ($s:expr, $l:expr, $what:expr, |$x:ident| $body:expr) => {
        match $s {
            CpuStorage::F32(v) => {
                let $x = contiguous(v, $l, $what)?;
                CpuStorage::F32($body)
            }
            CpuStorage::F64(v) => {
                let $x = contiguous(v, $l, $what)?;
                CpuStorage::F64($body)
            }
            _ => candle_core::bail!("{}: dtype not supported on CPU (use f32 or f64)", $what),
        }
    };
}

// ------------------------------------------------------------------ linear

/// y = x·Wᵀ with an explicit backward. Frozen W (weight_grad = false): candle's matmul
/// backward would compute the gradient of both operands; this op returns only dL/dx, so
/// a frozen weight costs no matmul and no memory in the backward pass (the LoRA promise).
/// Trainable W: dL/dW is returned detached. candle never detaches a leaf's gradient, so
/// through a plain matmul every weight gradient would keep its graph (the input
/// activation and the output gradient) alive until the optimizer step: that doubled
/// full fine-tuning's peak memory.
struct LinearOp {
    weight_grad: bool,
}

/// x·Wᵀ on any backend's storage (the weight's transpose is a view: no copy).
fn matmul_t<S: BackendStorage>(s1: &S, l1: &Layout, s2: &S, l2: &Layout) -> candle_core::Result<(S, Shape)> {
    let (m, k) = l1.shape().dims2()?;
    let (n, k2) = l2.shape().dims2()?;
    if k != k2 {
        candle_core::bail!("linear: x has {k} features but the weight expects {k2}")
    }
    let wt = l2.transpose(0, 1)?; // (k, n) view of the (n, k) weight, no copy
    let out = s1.matmul(s2, (1, m, n, k), l1, &wt)?;
    Ok((out, Shape::from((m, n))))
}

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "linear"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        matmul_t(s1, l1, s2, l2)
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        matmul_t(s1, l1, s2, l2) // cuBLAS
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // detached inputs: the backward builds no graph of its own
        let (x, w, g) = (x.detach(), w.detach(), g.detach());
        let dw = if self.weight_grad { Some(g.t()?.matmul(&x)?) } else { None };
        Ok((Some(g.matmul(&w)?), dw))
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
        let (out, shape) = matmul_t(s1, l1, s2, l2)?;
        let n = shape.dims()[1];
        let (b0, b1) =
            l3.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("frozen bias must be contiguous".into()))?;
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
        Ok((Some(g.detach().matmul(&w.detach())?), None, None))
    }
}

// ------------------------------------------------------------------ LoRA linear, fused

/// y = x·Wᵀ (+ b) + scale·(drop(x)·Aᵀ)·Bᵀ with W, b frozen and A, B trainable, in one op.
/// Composed from plain ops it keeps drop(x), x·Aᵀ, the update, its scaled copy and the
/// sum for backward, five extra activations per adapted module, which made LoRA slower
/// and heavier than full FT on activation-dominated shapes. Here only the op's inputs
/// are kept; drop(x) and x·Aᵀ are recomputed in the backward pass (the mask from the RNG,
/// x·Aᵀ at n·in·r flops, small next to the base matmul).
pub struct LoraOp {
    pub w: Tensor,
    pub bias: Option<Tensor>,
    pub scale: f64,
    pub dropout: Option<(crate::base::rng::Rng, f64)>,
    /// drop(x)·Aᵀ from the forward pass, (n, r): r/in of x's size, kept for the backward.
    h: std::sync::Mutex<Option<Tensor>>,
}

impl LoraOp {
    pub fn new(w: Tensor, bias: Option<Tensor>, scale: f64, dropout: Option<(crate::base::rng::Rng, f64)>) -> Self {
        Self { w, bias, scale, dropout, h: Default::default() }
    }
}

/// dx += mask ⊙ upd, in place (the LoRA branch's input gradient joins the base's).
struct AddDropped<'a> {
    dropout: Option<&'a Dropout>,
}

fn add_dropped<T: Float + Send + Sync + Default + std::ops::AddAssign>(dx: &mut [T], upd: &[T], d: Option<&Dropout>) {
    const CHUNK: usize = 4096;
    dx.par_chunks_mut(CHUNK).zip(upd.par_chunks(CHUNK)).enumerate().for_each(|(c, (o, u))| match d {
        None => o.iter_mut().zip(u).for_each(|(o, &u)| *o += u),
        Some(d) => {
            let (thr, keep) = (d.threshold(), T::from_f64(1.0 / (1.0 - d.p)));
            for (q, (oq, uq)) in o.chunks_mut(4).zip(u.chunks(4)).enumerate() {
                let bits = d.start.bits_at(((c * CHUNK) / 4 + q) as u64);
                for (lane, (o, &u)) in oq.iter_mut().zip(uq).enumerate() {
                    let m = if (bits >> (16 * lane)) & 0xFFFF < thr { T::default() } else { keep };
                    *o += u * m;
                }
            }
        }
    });
}

impl candle_core::InplaceOp2 for AddDropped<'_> {
    fn name(&self) -> &'static str {
        "add-dropped"
    }
    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<()> {
        let (a, b) =
            l1.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("add-dropped: contiguous only".into()))?;
        match (s1, s2) {
            (CpuStorage::F32(o), CpuStorage::F32(u)) => {
                add_dropped(&mut o[a..b], contiguous(u, l2, "add-dropped")?, self.dropout)
            }
            (CpuStorage::F64(o), CpuStorage::F64(u)) => {
                add_dropped(&mut o[a..b], contiguous(u, l2, "add-dropped")?, self.dropout)
            }
            _ => candle_core::bail!("add-dropped: dtype not supported on CPU"),
        }
        Ok(())
    }
}

fn cpu_of(t: &Tensor) -> candle_core::Result<(CpuStorage, Layout)> {
    let (st, l) = t.storage_and_layout();
    match &*st {
        candle_core::Storage::Cpu(c) => Ok((c.clone(), l.clone())),
        _ => candle_core::bail!("lora: expected a CPU tensor"),
    }
}

/// y += scale·d (+ bias on every row of `out` elements)
fn axpy_rows<T: Float + Send + Sync>(y: &mut [T], d: &[T], out: usize, scale: f64, bias: Option<&[T]>) {
    y.par_chunks_mut(out).zip(d.par_chunks(out)).for_each(|(yr, dr)| match bias {
        Some(b) => yr
            .iter_mut()
            .zip(dr)
            .zip(b)
            .for_each(|((yv, dv), bv)| *yv = T::from_f64(yv.to_f64() + scale * dv.to_f64() + bv.to_f64())),
        None => yr.iter_mut().zip(dr).for_each(|(yv, dv)| *yv = T::from_f64(yv.to_f64() + scale * dv.to_f64())),
    });
}

impl CustomOp3 for LoraOp {
    fn name(&self) -> &'static str {
        "lora-linear"
    }
    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sa: &CpuStorage,
        la: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        // W is captured, not an argument: it is frozen and gets no gradient.
        let (sw, lw) = cpu_of(&self.w)?;
        let (y, shape) = matmul_t(sx, lx, &sw, &lw)?;
        let (n, inp) = lx.shape().dims2()?;
        let dropped = match &self.dropout {
            Some((rng, p)) => {
                let op = Dropout { start: rng.clone(), p: *p };
                Some(cpu_dispatch!(sx, lx, "lora dropout", |x| op.apply(x)))
            }
            None => None,
        };
        let xl = Layout::contiguous((n, inp));
        let (h, _) = match &dropped {
            Some(xd) => matmul_t(xd, &xl, sa, la)?,
            None => matmul_t(sx, lx, sa, la)?,
        };
        let r = la.shape().dims2()?.0;
        let out = lb.shape().dims2()?.0;
        let (d, _) = matmul_t(&h, &Layout::contiguous((n, r)), sb, lb)?;
        if let Ok(mut cache) = self.h.lock() {
            *cache = Some(Tensor::from_storage(
                candle_core::Storage::Cpu(h),
                (n, r),
                candle_core::op::BackpropOp::none(),
                false,
            ));
        }
        let bias = match &self.bias {
            Some(b) => Some(cpu_of(b)?),
            None => None,
        };
        let y = match (y, d) {
            (CpuStorage::F32(mut y), CpuStorage::F32(d)) => {
                let b = match &bias {
                    Some((CpuStorage::F32(b), l)) => Some(contiguous(b, l, "lora bias")?),
                    Some(_) => candle_core::bail!("lora: the bias's dtype differs from the input's"),
                    None => None,
                };
                axpy_rows(&mut y, &d, out, self.scale, b);
                CpuStorage::F32(y)
            }
            (CpuStorage::F64(mut y), CpuStorage::F64(d)) => {
                let b = match &bias {
                    Some((CpuStorage::F64(b), l)) => Some(contiguous(b, l, "lora bias")?),
                    Some(_) => candle_core::bail!("lora: the bias's dtype differs from the input's"),
                    None => None,
                };
                axpy_rows(&mut y, &d, out, self.scale, b);
                CpuStorage::F64(y)
            }
            _ => candle_core::bail!("lora: dtype not supported on CPU (use f32 or f64)"),
        };
        Ok((y, shape))
    }
    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (x, a, b, g, w) = (x.detach(), a.detach(), b.detach(), g.detach(), self.w.detach());
        let drop = |t: &Tensor| -> candle_core::Result<Tensor> {
            match &self.dropout {
                Some((rng, p)) => t.contiguous()?.apply_op1(Dropout { start: rng.clone(), p: *p }),
                None => Ok(t.clone()),
            }
        };
        let xd = drop(&x)?;
        let h = match self.h.lock().ok().and_then(|mut c| c.take()) {
            Some(h) => h,
            None => xd.matmul(&a.t()?)?, // (n, r)
        };
        let gb = g.matmul(&b)?; // (n, r)
        let db = (g.t()?.matmul(&h)? * self.scale)?; // (out, r)
        let da = (gb.t()?.matmul(&xd)? * self.scale)?; // (r, in)
        let dx = g.matmul(&w)?; // (n, in), fresh: the LoRA branch is added into it in place
        let upd = (gb * self.scale)?.matmul(&a)?;
        let mask = self.dropout.as_ref().map(|(rng, p)| Dropout { start: rng.clone(), p: *p });
        dx.inplace_op2(&upd, &AddDropped { dropout: mask.as_ref() })?;
        Ok((Some(dx), Some(da), Some(db)))
    }
}

fn add_rows<T: Copy + std::ops::AddAssign>(y: &mut [T], b: &[T], n: usize) {
    for row in y.chunks_exact_mut(n) {
        for (v, bv) in row.iter_mut().zip(b) {
            *v += *bv;
        }
    }
}

/// x: (n, in), w: (out, in) -> (n, out); dL/dW only when `weight_grad`, and detached.
pub fn linear(x: &Tensor, w: &Tensor, weight_grad: bool) -> candle_core::Result<Tensor> {
    if !cpu_kernels_apply(x) {
        let w = if weight_grad { in_dtype_of(w, x)? } else { in_dtype_of(&w.detach(), x)? };
        // on the GPU the op too (its forward is cuBLAS): a frozen weight then costs no
        // weight-gradient matmul in the backward, and a trained one's gradient keeps no graph
        #[cfg(feature = "cuda")]
        if crate::nn::cuda::kernels_apply(x) && x.rank() == 2 {
            return x.contiguous()?.apply_op2(&w, LinearOp { weight_grad });
        }
        return x.matmul(&w.t()?);
    }
    x.contiguous()?.apply_op2(w, LinearOp { weight_grad })
}

/// x: (n, in), w: (out, in), b: (out) -> (n, out); gradient flows to x only.
pub fn frozen_linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> candle_core::Result<Tensor> {
    match b {
        None => linear(x, w, false),
        Some(b) if !cpu_kernels_apply(x) => linear(x, w, false)?.broadcast_add(&in_dtype_of(&b.detach(), x)?),
        Some(b) => x.contiguous()?.apply_op3(w, b, FrozenLinearBias),
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
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = *l1.dims().last().unwrap_or(&1);
        let (x0, x1) =
            l1.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("rms-norm: x must be contiguous".into()))?;
        let (w0, w1) = l2
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("rms-norm: weight must be contiguous".into()))?;
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(w)) => CpuStorage::F32(rms_fwd(&x[x0..x1], &w[w0..w1], d, self.eps)),
            (CpuStorage::F64(x), CpuStorage::F64(w)) => CpuStorage::F64(rms_fwd(&x[x0..x1], &w[w0..w1], d, self.eps)),
            _ => candle_core::bail!("rms-norm: dtype not supported on CPU (use f32 or f64)"),
        };
        Ok((out, l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // r = (mean(x²)+eps)^-½ ; dx = r·(g·w) − x·r³·mean((g·w)·x) ; dw = Σ_rows g·x·r
        let r = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?.sqrt()?.recip()?;
        let gw = g.broadcast_mul(w)?;
        let dot = (&gw * x)?.mean_keepdim(D::Minus1)?;
        let dx = (gw.broadcast_mul(&r)? - x.broadcast_mul(&(r.powf(3.0)? * dot)?)?)?;
        let dw = if self.weight_grad {
            let xr = x.broadcast_mul(&r)?;
            let lead = xr.rank() - 1;
            Some((g * xr)?.flatten_to(lead.saturating_sub(1))?.sum(0)?.detach())
        } else {
            None
        };
        Ok((Some(dx), dw))
    }
}

/// x: (.., d), w: (d) -> (.., d)
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, weight_grad: bool) -> candle_core::Result<Tensor> {
    if !cpu_kernels_apply(x) {
        let w = if weight_grad { w.clone() } else { w.detach() };
        #[cfg(feature = "cuda")]
        if crate::nn::cuda::kernels_apply(x) {
            return crate::nn::cuda::rms_norm(x, &in_dtype_of(&w, x)?, eps, weight_grad);
        }
        return in_f32(x, |x| crate::nn::portable::rms_norm(x, &w.to_dtype(x.dtype())?, eps));
    }
    x.contiguous()?.apply_op2(w, RmsNorm { eps, weight_grad })
}

/// Small numeric trait so the CPU kernels serve f32 and f64.
pub mod num_like {
    pub trait Float: Copy + std::ops::Mul<Output = Self> {
        fn to_f64(self) -> f64;
        fn from_f64(v: f64) -> Self;
        /// exp evaluated in the tensor's own precision (f32's is several times cheaper).
        fn exp_in(v: f64) -> f64;
    }
    impl Float for f32 {
        fn to_f64(self) -> f64 {
            self as f64
        }
        fn from_f64(v: f64) -> Self {
            v as f32
        }
        fn exp_in(v: f64) -> f64 {
            (v as f32).exp() as f64
        }
    }
    impl Float for f64 {
        fn to_f64(self) -> f64 {
            self
        }
        fn from_f64(v: f64) -> Self {
            v
        }
        fn exp_in(v: f64) -> f64 {
            v.exp()
        }
    }
}

// ------------------------------------------------------------------ causal softmax

/// softmax(scale·x) over the last dim with a causal mask: row i of each (t, t) block
/// sees columns j ≤ i. Replaces scale, mask add and a six-op softmax (each kept for
/// backward, and the mask and scale constants would receive gradients too).
struct CausalSoftmax {
    scale: f64,
}

fn causal_softmax_rows<T: Float + Send + Sync + Default>(x: &[T], t: usize, scale: f64) -> Vec<T> {
    map_rows(x, t, |r, xi, yo| {
        let i = r % t;
        let m = xi[..=i].iter().fold(f64::NEG_INFINITY, |m, v| m.max(v.to_f64()));
        let mut sum = 0.0;
        for j in 0..=i {
            let e = T::exp_in((xi[j].to_f64() - m) * scale);
            sum += e;
            yo[j] = T::from_f64(e);
        }
        let inv = 1.0 / sum;
        for v in yo[..=i].iter_mut() {
            *v = T::from_f64(v.to_f64() * inv);
        }
        yo[i + 1..].fill(T::default()); // masked: the future
    })
}

impl candle_core::CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let t = *l.dims().last().unwrap_or(&1);
        if l.dims().len() < 2 || !l.dims()[l.dims().len() - 2].is_multiple_of(t) {
            candle_core::bail!(
                "causal-softmax: expects (.., k·t, t) scores (row r is query position r mod t), got {:?}",
                l.dims()
            )
        }
        let out = cpu_dispatch!(s, l, "causal-softmax", |x| causal_softmax_rows(x, t, self.scale));
        Ok((out, l.shape().clone()))
    }
    fn bwd(&self, _x: &Tensor, p: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // dS = scale · P ⊙ (dP − Σ_j dP⊙P); masked entries have P = 0 and get 0
        let dot = (g * p)?.sum_keepdim(D::Minus1)?;
        Ok(Some(((g.broadcast_sub(&dot)? * p)? * self.scale)?))
    }
}

/// scores: (.., t, t) -> attention probabilities, causal, softmax(scale·scores).
pub fn causal_softmax(scores: &Tensor, scale: f64) -> candle_core::Result<Tensor> {
    if !cpu_kernels_apply(scores) {
        return in_f32(scores, |s| crate::nn::portable::causal_softmax(s, scale));
    }
    scores.contiguous()?.apply_op1(CausalSoftmax { scale })
}

/// Causal attention softmax(q·kᵀ·scale)·v over q (b, nh, t, hd) and k, v (b, kvh, t, hd)
/// by the flash-attention kernel, where one serves (CUDA builds, on the GPU); None
/// otherwise, and the caller composes it from matmuls and `causal_softmax`.
pub fn flash_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> candle_core::Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    return crate::nn::cuda::attention(q, k, v, scale);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (q, k, v, scale);
        Ok(None)
    }
}

/// silu(g)·u, the SwiGLU gate. On the GPU one kernel each way that keeps only g and u for the
/// backward; elsewhere candle's silu and mul.
pub fn swiglu(g: &Tensor, u: &Tensor) -> candle_core::Result<Tensor> {
    #[cfg(feature = "cuda")]
    if crate::nn::cuda::kernels_apply(g) {
        return crate::nn::cuda::swiglu(g, u);
    }
    g.silu()? * u
}

// ------------------------------------------------------------------ rotary embedding

/// x·cos + rotate_half(x)·sin with the tables captured (so they get no gradient). The
/// backward is the inverse rotation: the same op with sin negated.
struct Rope {
    cos: Arc<Vec<f64>>,
    sin: Arc<Vec<f64>>,
    t: usize,
    hd: usize,
}

fn rope_rows<T: Float + Send + Sync + Default>(x: &[T], r: &Rope) -> Vec<T> {
    let (t, hd, h) = (r.t, r.hd, r.hd / 2);
    map_rows(x, hd, |row, xi, yo| {
        let pos = row % t;
        let (c, s) = (&r.cos[pos * hd..(pos + 1) * hd], &r.sin[pos * hd..(pos + 1) * hd]);
        for i in 0..hd {
            let rot = if i < h { -xi[i + h].to_f64() } else { xi[i - h].to_f64() };
            yo[i] = T::from_f64(xi[i].to_f64() * c[i] + rot * s[i]);
        }
    })
}

impl candle_core::CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = l.dims();
        if d.len() != 4 || d[2] != self.t || d[3] != self.hd {
            candle_core::bail!("rope: expects (b, h, {}, {}), got {d:?}", self.t, self.hd)
        }
        let out = cpu_dispatch!(s, l, "rope", |x| rope_rows(x, self));
        Ok((out, l.shape().clone()))
    }
    fn bwd(&self, _x: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let inv = Rope {
            cos: self.cos.clone(),
            sin: Arc::new(self.sin.iter().map(|v| -v).collect()),
            t: self.t,
            hd: self.hd,
        };
        Ok(Some(g.contiguous()?.apply_op1(inv)?))
    }
}

/// Rotary tables for positions 0..t, (t·hd) each, frequencies repeated as HF does.
#[derive(Clone)]
pub struct RopeTables {
    pub cos: Arc<Vec<f64>>,
    pub sin: Arc<Vec<f64>>,
    pub t: usize,
    pub hd: usize,
    /// (cos, sin) as tensors on the model's device, made once (uploading them for every q and
    /// k of every layer would cost a copy each time): in the activations' dtype for the
    /// portable path, in f32 for the CUDA kernel.
    device_tables: Arc<std::sync::OnceLock<(Tensor, Tensor)>>,
}

impl RopeTables {
    pub fn new(inv_freq: &[f64], t: usize) -> Self {
        let hd = inv_freq.len() * 2;
        let mut cos = Vec::with_capacity(t * hd);
        let mut sin = Vec::with_capacity(t * hd);
        for p in 0..t {
            for _ in 0..2 {
                for f in inv_freq {
                    cos.push((p as f64 * f).cos());
                    sin.push((p as f64 * f).sin());
                }
            }
        }
        Self { cos: Arc::new(cos), sin: Arc::new(sin), t, hd, device_tables: Default::default() }
    }
    /// (cos, sin) on `dev` in `dt`, from the cache when the first caller asked for the same.
    fn device_tables(
        &self,
        dev: &candle_core::Device,
        dt: candle_core::DType,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        if let Some(c) = self.device_tables.get().filter(|c| c.0.dtype() == dt && c.0.device().same_device(dev)) {
            return Ok(c.clone());
        }
        let table = |v: &Arc<Vec<f64>>| {
            Tensor::from_slice(v.as_slice(), (self.t, self.hd), &candle_core::Device::Cpu)?.to_dtype(dt)?.to_device(dev)
        };
        let c = (table(&self.cos)?, table(&self.sin)?);
        let _ = self.device_tables.set(c.clone()); // the first caller's device and dtype stay cached
        Ok(c)
    }
    /// x: (b, h, t, hd) -> (b, h, t, hd)
    pub fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if !cpu_kernels_apply(x) {
            #[cfg(feature = "cuda")]
            if crate::nn::cuda::kernels_apply(x) {
                let (cos, sin) = self.device_tables(x.device(), candle_core::DType::F32)?; // the kernel reads f32 tables
                return crate::nn::cuda::rope(x, &cos, &sin);
            }
            let (cos, sin) = self.device_tables(x.device(), x.dtype())?;
            return crate::nn::portable::rope(x, &cos, &sin);
        }
        x.contiguous()?.apply_op1(Rope { cos: self.cos.clone(), sin: self.sin.clone(), t: self.t, hd: self.hd })
    }
}

// ------------------------------------------------------------------ dropout

/// x ⊙ mask with mask_i = 0 (probability p) or 1/(1−p). Each RNG draw gives four
/// 16-bit lanes, one per element (p is applied at 1/65536 resolution), at a fixed offset
/// from the run's RNG, so the mask is regenerated in the backward pass instead of stored
/// (a stored f32 mask per adapted module would cost as much as its input).
struct Dropout {
    start: crate::base::rng::Rng,
    p: f64,
}

impl Dropout {
    fn threshold(&self) -> u64 {
        (self.p * 65536.0).round() as u64
    }
    fn apply<T: Float + Send + Sync + Default>(&self, x: &[T]) -> Vec<T> {
        const CHUNK: usize = 4096; // a multiple of 4: chunks start on a draw boundary
        let thr = self.threshold();
        let keep = T::from_f64(1.0 / (1.0 - self.p));
        par_fill(x.len(), CHUNK, |c, yo| {
            let xi = &x[c * CHUNK..(c * CHUNK + yo.len())];
            for (q, (yq, xq)) in yo.chunks_mut(4).zip(xi.chunks(4)).enumerate() {
                let bits = self.start.bits_at(((c * CHUNK) / 4 + q) as u64);
                for (lane, (o, &v)) in yq.iter_mut().zip(xq).enumerate() {
                    // in T's own arithmetic, branch-free: f64 round trips cost more than the mask
                    let m = if (bits >> (16 * lane)) & 0xFFFF < thr { T::default() } else { keep };
                    o.write(v * m);
                }
            }
        })
    }
    /// RNG draws used for n elements.
    fn draws(n: usize) -> u64 {
        n.div_ceil(4) as u64
    }
}

impl candle_core::CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "dropout"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = cpu_dispatch!(s, l, "dropout", |x| self.apply(x));
        Ok((out, l.shape().clone()))
    }
    fn bwd(&self, _x: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(g.contiguous()?.apply_op1(Dropout { start: self.start.clone(), p: self.p })?))
    }
}

/// RNG draws a dropout mask over n elements uses.
pub fn dropout_draws(n: usize) -> u64 {
    Dropout::draws(n)
}

/// Dropout with probability p; advances `rng` past the elements it used.
pub fn dropout(x: &Tensor, p: f64, rng: &mut crate::base::rng::Rng) -> candle_core::Result<Tensor> {
    let op = Dropout { start: rng.clone(), p };
    rng.skip(Dropout::draws(x.elem_count()));
    #[cfg(feature = "cuda")]
    if crate::nn::cuda::kernels_apply(x) {
        // the same mask, drawn on the device
        return crate::nn::cuda::dropout(x, op.start.state, op.threshold() as u32, (1.0 / (1.0 - p)) as f32);
    }
    if !cpu_kernels_apply(x) {
        // the same mask (same RNG bits), drawn on the host and applied as a constant
        let ones = Tensor::ones(x.shape(), candle_core::DType::F32, &candle_core::Device::Cpu)?;
        let mask = ones.apply_op1_no_bwd(&op)?.to_dtype(x.dtype())?.to_device(x.device())?;
        return x * mask;
    }
    x.contiguous()?.apply_op1(op)
}

// ------------------------------------------------------------------ masked next-token loss

/// Σ_i w_i·(logsumexp(logits_i) − logits_i[target_i]) with w = mask/denom: the
/// cross-entropy with an ignore mask that candle lacks, fused so the (n, vocab)
/// log-softmax intermediates are never stored. Backward: w_i·(softmax_i − onehot_i).
struct MaskedNll {
    targets: Arc<Vec<u32>>,
    weights: Arc<Vec<f64>>,
}

fn lse_row<T: Float>(row: &[T]) -> f64 {
    let m = row.iter().fold(f64::NEG_INFINITY, |m, v| m.max(v.to_f64()));
    m + row.iter().map(|v| T::exp_in(v.to_f64() - m)).sum::<f64>().ln()
}

fn nll_sum<T: Float + Send + Sync>(x: &[T], v: usize, op: &MaskedNll) -> f64 {
    x.par_chunks(v)
        .enumerate()
        .map(|(i, row)| {
            if op.weights[i] == 0.0 {
                0.0
            } else {
                op.weights[i] * (lse_row(row) - row[op.targets[i] as usize].to_f64())
            }
        })
        .sum()
}

fn nll_grad<T: Float + Send + Sync + Default>(x: &[T], v: usize, op: &MaskedNll) -> Vec<T> {
    map_rows(x, v, |i, row, out| {
        let w = op.weights[i];
        if w == 0.0 {
            out.fill(T::default());
            return;
        }
        let lse = lse_row(row);
        for (o, l) in out.iter_mut().zip(row) {
            *o = T::from_f64(w * T::exp_in(l.to_f64() - lse));
        }
        let t = op.targets[i] as usize;
        out[t] = T::from_f64(out[t].to_f64() - w);
    })
}

impl candle_core::CustomOp1 for MaskedNll {
    fn name(&self) -> &'static str {
        "masked-nll"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, v) = l.shape().dims2()?;
        if n != self.targets.len() {
            candle_core::bail!("masked-nll: {n} rows of logits for {} targets", self.targets.len())
        }
        if let Some(bad) = self.targets.iter().find(|&&t| t as usize >= v) {
            candle_core::bail!("masked-nll: target id {bad} is outside the vocabulary of {v} (hint: tokenizer and model config disagree)")
        }
        let out = cpu_dispatch!(s, l, "masked-nll", |x| vec![num_like::Float::from_f64(nll_sum(x, v, self))]);
        Ok((out, Shape::from(())))
    }
    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let d = x.contiguous()?.apply_op1_no_bwd(&MaskedNllGrad {
            op: MaskedNll { targets: self.targets.clone(), weights: self.weights.clone() },
        })?;
        Ok(Some(d.broadcast_mul(g)?))
    }
}

struct MaskedNllGrad {
    op: MaskedNll,
}

impl candle_core::CustomOp1 for MaskedNllGrad {
    fn name(&self) -> &'static str {
        "masked-nll-grad"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, v) = l.shape().dims2()?;
        let out = cpu_dispatch!(s, l, "masked-nll-grad", |x| nll_grad(x, v, &self.op));
        Ok((out, l.shape().clone()))
    }
}

/// logits (n, V), targets (n) ids, weights (n) = mask/denom -> scalar loss.
pub fn masked_nll(logits: &Tensor, targets: Vec<u32>, weights: Vec<f64>) -> candle_core::Result<Tensor> {
    #[cfg(feature = "cuda")]
    if crate::nn::cuda::kernels_apply(logits) {
        return crate::nn::cuda::masked_nll(logits, &targets, &weights);
    }
    if !cpu_kernels_apply(logits) {
        // in f32 (the loss of bf16 logits), on the logits' device
        let dev = logits.device();
        let n = targets.len();
        let targets = Tensor::from_vec(targets, n, dev)?;
        let weights = Tensor::from_vec(weights.iter().map(|&w| w as f32).collect::<Vec<f32>>(), n, dev)?;
        return crate::nn::portable::masked_loss(&logits.to_dtype(candle_core::DType::F32)?, &targets, &weights, 1.0);
    }
    logits.contiguous()?.apply_op1(MaskedNll { targets: Arc::new(targets), weights: Arc::new(weights) })
}
