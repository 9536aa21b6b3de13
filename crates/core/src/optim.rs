//! Optimizers (decoupled LionW, AdamW), learning-rate schedules and global-norm
//! clipping. Called once per step by train.rs. State lives only for trainable
//! tensors, in f32 (f64 when the model runs in f64 for gradient checks).
use crate::config::{OptimConfig, OptimizerName, ScheduleConfig, ScheduleKind};
use candle_core::{DType, Result, Tensor, Var};

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
    if param == DType::F64 { DType::F64 } else { DType::F32 }
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
    pub fn step(&mut self, params: &[(String, Var)], grads: &[Tensor], lr: f64, t: usize) -> Result<()> {
        let [b1, b2] = self.betas;
        for ((( _, p), g), st) in params.iter().zip(grads).zip(self.state.iter_mut()) {
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
    for g in grads.iter() {
        sq += g.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
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

/// The learning rate for update index `s` (0-based) of a `total`-step schedule.
pub fn lr_at(cfg: &ScheduleConfig, lr0: f64, s: usize, total: usize) -> f64 {
    let total = total.max(1);
    let warm = (cfg.warmup_frac * total as f64).round() as usize;
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
