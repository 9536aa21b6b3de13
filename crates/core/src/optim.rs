//! Optimizers (decoupled LionW, AdamW), learning-rate schedules and global-norm
//! clipping. Called once per step by train.rs. State lives only for trainable
//! tensors, in f32 (f64 when the model runs in f64 for gradient checks).
use crate::config::{OptimConfig, OptimizerName, ScheduleConfig, ScheduleKind};
use crate::nn::ops::num_like::Float;
use candle_core::{CpuStorage, DType, Layout, Result, Shape, Tensor, Var};
use rayon::prelude::*;

pub struct ParamState {
    pub m: Tensor,
    /// AdamW's second moment; LionW keeps one moment only.
    pub v: Option<Tensor>,
}

pub struct Optimizer {
    pub name: OptimizerName,
    pub lr0: f64,
    pub betas: [f64; 2],
    pub eps: f64,
    pub weight_decay: f64,
    /// One entry per trainable tensor, in `Llama::trainable()` order.
    pub state: Vec<ParamState>,
}

pub fn state_dtype(param: DType) -> DType {
    if param == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

impl Optimizer {
    pub fn new(cfg: &OptimConfig, lr0: f64, params: &[(String, Var)]) -> Result<Self> {
        let mut state = Vec::with_capacity(params.len());
        for (_, p) in params {
            let dt = state_dtype(p.dtype());
            let z = || Tensor::zeros(p.shape(), dt, p.device());
            state.push(ParamState { m: z()?, v: if cfg.name == OptimizerName::Adamw { Some(z()?) } else { None } });
        }
        Ok(Self { name: cfg.name, lr0, betas: cfg.betas, eps: cfg.eps, weight_decay: cfg.weight_decay, state })
    }

    /// Apply one update. `t` is the 1-based count of updates (AdamW's bias correction).
    /// On CPU with parameter, gradient and state in one dtype (and on CUDA in f32), each tensor
    /// is updated in place in one or two fused passes (no temporaries); otherwise `step_reference`.
    pub fn step(&mut self, params: &[(String, Var)], grads: &[Tensor], lr: f64, t: usize) -> Result<()> {
        let [b1, b2] = self.betas;
        // the CUDA build runs the same passes as kernels on f32 (masters and state are f32 there),
        // unless its kernels are turned off
        #[cfg(feature = "cuda")]
        let fused_here =
            |p: &Tensor| p.device().is_cpu() || (crate::nn::cuda::kernels_apply(p) && p.dtype() == DType::F32);
        #[cfg(not(feature = "cuda"))]
        let fused_here = |p: &Tensor| p.device().is_cpu();
        let fusable = params.iter().zip(grads).zip(&self.state).all(|(((_, p), g), st)| {
            fused_here(p)
                && p.dtype() == g.dtype()
                && p.dtype() == st.m.dtype()
                && (p.dtype() == DType::F32 || p.dtype() == DType::F64)
                && p.is_contiguous()
                && g.is_contiguous()
        });
        if !fusable {
            return self.step_portable(params, grads, lr, t);
        }
        for (((_, p), g), st) in params.iter().zip(grads).zip(self.state.iter_mut()) {
            let p = p.as_tensor();
            match self.name {
                OptimizerName::Lionw => {
                    let decay = if self.weight_decay > 0.0 { 1.0 - lr / self.lr0 * self.weight_decay } else { 1.0 };
                    p.inplace_op3(&st.m, g, &Kernel::Lion { decay, lr, b1 })?;
                    st.m.inplace_op2(g, &Kernel::Moment { beta: b2, square: false })?;
                }
                OptimizerName::Adamw => {
                    let v = st.v.as_ref().ok_or_else(|| candle_core::Error::Msg("adamw state missing v".into()))?;
                    st.m.inplace_op2(g, &Kernel::Moment { beta: b1, square: false })?;
                    v.inplace_op2(g, &Kernel::Moment { beta: b2, square: true })?;
                    let decay = if self.weight_decay > 0.0 { 1.0 - lr * self.weight_decay } else { 1.0 };
                    let (bc1, bc2) = (1.0 - b1.powi(t as i32), 1.0 - b2.powi(t as i32));
                    p.inplace_op3(&st.m, v, &Kernel::Adam { decay, lr, bc1, bc2, eps: self.eps })?;
                }
            }
        }
        Ok(())
    }

    /// The same update from plain tensor ops (any device and dtype mix; the fused path is tested against it).
    pub fn step_portable(&mut self, params: &[(String, Var)], grads: &[Tensor], lr: f64, t: usize) -> Result<()> {
        let [b1, b2] = self.betas;
        for (((_, p), g), st) in params.iter().zip(grads).zip(self.state.iter_mut()) {
            let dt = state_dtype(p.dtype());
            let g = g.to_dtype(dt)?;
            let w = p.as_tensor().to_dtype(dt)?;
            let new_w = match self.name {
                OptimizerName::Lionw => {
                    // Decoupled LionW (Composer's, as the study): p *= 1 − (lr_t/lr_0)·wd;
                    // p −= lr·sign(β1·m + (1−β1)·g); m = β2·m + (1−β2)·g.
                    let w = if self.weight_decay > 0.0 { (w * (1.0 - lr / self.lr0 * self.weight_decay))? } else { w };
                    let c = ((&st.m * b1)? + (&g * (1.0 - b1))?)?;
                    st.m = ((&st.m * b2)? + (&g * (1.0 - b2))?)?;
                    (w - (c.sign()? * lr)?)?
                }
                OptimizerName::Adamw => {
                    // torch.optim.AdamW: p *= 1 − lr·wd; then the Adam step with bias correction.
                    let w = if self.weight_decay > 0.0 { (w * (1.0 - lr * self.weight_decay))? } else { w };
                    st.m = ((&st.m * b1)? + (&g * (1.0 - b1))?)?;
                    let v = st.v.as_ref().ok_or_else(|| candle_core::Error::Msg("adamw state missing v".into()))?;
                    let v = ((v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
                    let bc1 = 1.0 - b1.powi(t as i32);
                    let bc2 = 1.0 - b2.powi(t as i32);
                    let denom = ((&v / bc2)?.sqrt()? + self.eps)?;
                    let upd = ((&st.m / bc1)? / denom)?;
                    st.v = Some(v);
                    (w - (upd * lr)?)?
                }
            };
            p.set(&new_w.to_dtype(p.dtype())?)?;
        }
        Ok(())
    }
}

/// Global L2 norm of all gradients; scaled in place to `max_norm` when above it
/// (torch's clip_grad_norm_: coefficient max_norm/(norm+1e-6), capped at 1).
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let mut sq = 0.0f64;
    // on a GPU (or the portable path) each gradient's Σg² stays on the device, in f32, and
    // the host reads their sum once: one synchronisation per step, not one per tensor
    let mut on_device = Vec::new();
    for g in grads.iter() {
        if g.device().is_cpu() && g.is_contiguous() && !crate::nn::portable::forced() {
            sq += g.apply_op1_no_bwd(&SumSquares)?.to_scalar::<f64>()?;
        } else {
            on_device.push(g.to_dtype(DType::F32)?.sqr()?.sum_all()?);
        }
    }
    if !on_device.is_empty() {
        sq += Tensor::stack(&on_device, 0)?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    }
    let norm = sq.sqrt();
    if max_norm > 0.0 && norm.is_finite() {
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            for g in grads.iter_mut() {
                *g = (&*g * coef)?;
            }
        }
    }
    Ok(norm)
}

// ------------------------------------------------------------------ fused CPU kernels

/// In-place updates, one pass each: a moment (m = β·m + (1−β)·g or g²), LionW's and
/// AdamW's parameter updates. Maths in f64 per element, whatever the storage dtype.
enum Kernel {
    Moment { beta: f64, square: bool },
    Lion { decay: f64, lr: f64, b1: f64 },
    Adam { decay: f64, lr: f64, bc1: f64, bc2: f64, eps: f64 },
}

fn slice<'a, T>(v: &'a [T], l: &Layout) -> Result<&'a [T]> {
    let (a, b) =
        l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("optimizer: contiguous tensors only".into()))?;
    Ok(&v[a..b])
}

fn slice_mut<'a, T>(v: &'a mut [T], l: &Layout) -> Result<&'a mut [T]> {
    let (a, b) =
        l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("optimizer: contiguous tensors only".into()))?;
    Ok(&mut v[a..b])
}

const CHUNK: usize = 1 << 14;

fn moment<T: Float + Send + Sync>(m: &mut [T], g: &[T], beta: f64, square: bool) {
    m.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).for_each(|(m, g)| {
        for (m, g) in m.iter_mut().zip(g) {
            let g = g.to_f64();
            *m = T::from_f64(beta * m.to_f64() + (1.0 - beta) * if square { g * g } else { g });
        }
    });
}

fn update<T: Float + Send + Sync>(p: &mut [T], a: &[T], b: &[T], k: &Kernel) {
    p.par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK)).zip(b.par_chunks(CHUNK)).for_each(|((p, a), b)| {
        for ((p, a), b) in p.iter_mut().zip(a).zip(b) {
            let w = p.to_f64();
            *p = T::from_f64(match *k {
                // a = m, b = g: p·decay − lr·sign(β1·m + (1−β1)·g)
                Kernel::Lion { decay, lr, b1 } => {
                    let c = b1 * a.to_f64() + (1.0 - b1) * b.to_f64();
                    w * decay
                        - lr * if c > 0.0 {
                            1.0
                        } else if c < 0.0 {
                            -1.0
                        } else {
                            0.0
                        }
                }
                // a = m, b = v: p·decay − lr·m̂/(√v̂ + eps)
                Kernel::Adam { decay, lr, bc1, bc2, eps } => {
                    w * decay - lr * (a.to_f64() / bc1) / ((b.to_f64() / bc2).sqrt() + eps)
                }
                Kernel::Moment { .. } => w,
            });
        }
    });
}

impl candle_core::InplaceOp2 for Kernel {
    fn name(&self) -> &'static str {
        "optimizer-moment"
    }
    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let Kernel::Moment { beta, square } = *self else { candle_core::bail!("optimizer: not a moment kernel") };
        match (s1, s2) {
            (CpuStorage::F32(m), CpuStorage::F32(g)) => moment(slice_mut(m, l1)?, slice(g, l2)?, beta, square),
            (CpuStorage::F64(m), CpuStorage::F64(g)) => moment(slice_mut(m, l1)?, slice(g, l2)?, beta, square),
            _ => candle_core::bail!("optimizer: dtype mismatch"),
        }
        Ok(())
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &mut candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<()> {
        let Kernel::Moment { beta, square } = *self else { candle_core::bail!("optimizer: not a moment kernel") };
        crate::nn::cuda::opt_moment(s1, l1, s2, l2, beta, square)
    }
}

impl candle_core::InplaceOp3 for Kernel {
    fn name(&self) -> &'static str {
        "optimizer-update"
    }
    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        match (s1, s2, s3) {
            (CpuStorage::F32(p), CpuStorage::F32(a), CpuStorage::F32(b)) => {
                update(slice_mut(p, l1)?, slice(a, l2)?, slice(b, l3)?, self)
            }
            (CpuStorage::F64(p), CpuStorage::F64(a), CpuStorage::F64(b)) => {
                update(slice_mut(p, l1)?, slice(a, l2)?, slice(b, l3)?, self)
            }
            _ => candle_core::bail!("optimizer: dtype mismatch"),
        }
        Ok(())
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &mut candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<()> {
        match *self {
            Kernel::Adam { decay, lr, bc1, bc2, eps } => {
                crate::nn::cuda::opt_adam(s1, l1, (s2, l2), (s3, l3), decay, lr, bc1, bc2, eps)
            }
            Kernel::Lion { decay, lr, b1 } => crate::nn::cuda::opt_lion(s1, l1, (s2, l2), (s3, l3), decay, lr, b1),
            Kernel::Moment { .. } => candle_core::bail!("optimizer: a moment is not an update"),
        }
    }
}

/// Σ g² in f64, one pass, no temporary tensor.
struct SumSquares;

impl candle_core::CustomOp1 for SumSquares {
    fn name(&self) -> &'static str {
        "sum-squares"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        fn ss<T: Float + Sync>(v: &[T]) -> f64 {
            v.par_chunks(CHUNK).map(|c| c.iter().map(|x| x.to_f64() * x.to_f64()).sum::<f64>()).sum()
        }
        let v = match s {
            CpuStorage::F32(v) => ss(slice(v, l)?),
            CpuStorage::F64(v) => ss(slice(v, l)?),
            _ => candle_core::bail!("sum-squares: f32 or f64 only"),
        };
        Ok((CpuStorage::F64(vec![v]), Shape::from(())))
    }
}

/// The learning rate for update index `s` (0-based) of a `total`-step schedule.
pub fn lr_at(cfg: &ScheduleConfig, lr0: f64, s: usize, total: usize) -> f64 {
    let total = total.max(1);
    let warm = if cfg.warmup_steps > 0 { cfg.warmup_steps } else { (cfg.warmup_frac * total as f64).round() as usize };
    if s < warm {
        return lr0 * (s + 1) as f64 / warm as f64;
    }
    match cfg.kind {
        ScheduleKind::Constant => lr0,
        ScheduleKind::Cosine => {
            let span = (total - warm).max(1) as f64;
            let progress = (s - warm) as f64 / span;
            lr0 * (cfg.final_frac + (1.0 - cfg.final_frac) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()))
        }
        ScheduleKind::InverseSqrt => {
            let inv = |i: usize| lr0 * (warm.max(1) as f64 / (i + 1) as f64).sqrt().min(1.0);
            let cool = (cfg.cooldown_frac * total as f64).round() as usize;
            let cool_start = total - cool.min(total);
            if cool > 0 && s >= cool_start {
                inv(cool_start) * (total - s) as f64 / cool as f64
            } else {
                inv(s)
            }
        }
    }
}
