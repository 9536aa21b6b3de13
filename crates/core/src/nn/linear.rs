//! Weights, the linear layer and its LoRA adapter. Called by model.rs.
//! A weight is frozen (a plain tensor: no gradient, no optimizer state) or trainable
//! (a candle Var). A frozen linear goes through ops::frozen_linear, whose backward
//! computes dL/dx only.
use crate::base::rng::Rng;
use crate::nn::ops;
use candle_core::{DType, Result, Tensor, Var};

pub enum Weight {
    Frozen(Tensor),
    Trainable(Var),
}

impl Weight {
    pub fn tensor(&self) -> &Tensor {
        match self {
            Weight::Frozen(t) => t,
            Weight::Trainable(v) => v.as_tensor(),
        }
    }
    pub fn is_trainable(&self) -> bool {
        matches!(self, Weight::Trainable(_))
    }
    /// Make this weight train (full fine-tuning): an f32 master under bf16.
    pub fn unfreeze(&mut self) -> Result<()> {
        if let Weight::Frozen(t) = self {
            *self = Weight::Trainable(Var::from_tensor(&t.to_dtype(master_dtype(t.dtype()))?)?);
        }
        Ok(())
    }
}

/// Trained weights keep an f32 master copy when the model computes in bf16/f16; the
/// optimizer updates it and checkpoints save it.
pub fn master_dtype(compute: DType) -> DType {
    if compute == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// The low-rank update scale·B·A on a frozen linear (PEFT's layout: A is (r, in), B is (out, r)).
pub struct LoraAdapter {
    pub a: Var,
    pub b: Var,
    pub scale: f64,
    pub dropout: f64,
}

pub struct Linear {
    /// Hugging Face module path, e.g. `model.layers.0.self_attn.q_proj`.
    pub name: String,
    pub weight: Weight,
    pub bias: Option<Weight>,
    pub lora: Option<LoraAdapter>,
}

/// Forward-pass context: training switches dropout on; the RNG draws its masks.
pub struct ForwardCtx<'a> {
    pub train: bool,
    pub rng: &'a mut Rng,
}

/// x · keep/(1−p), keep ~ Bernoulli(1−p), drawn from the run's RNG so resume is exact.
pub fn dropout(x: &Tensor, p: f64, ctx: &mut ForwardCtx) -> Result<Tensor> {
    if !ctx.train || p == 0.0 {
        return Ok(x.clone());
    }
    ops::dropout(x, p, ctx.rng)
}

impl Linear {
    pub fn new(name: String, weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { name, weight: Weight::Frozen(weight), bias: bias.map(Weight::Frozen), lora: None }
    }

    pub fn in_out(&self) -> (usize, usize) {
        let d = self.weight.tensor().dims();
        (d[1], d[0])
    }

    /// x·Wᵀ + b without the adapter. x: (n, in) -> (n, out)
    fn base_forward(&self, x: &Tensor) -> Result<Tensor> {
        let w = self.weight.tensor();
        let y = if self.weight.is_trainable() {
            let y = ops::linear(x, w, true)?;
            match &self.bias {
                Some(b) => y.broadcast_add(&b.tensor().to_dtype(y.dtype())?)?,
                None => y,
            }
        } else {
            match &self.bias {
                Some(Weight::Trainable(b)) => {
                    ops::frozen_linear(x, w, None)?.broadcast_add(&b.as_tensor().to_dtype(x.dtype())?)?
                }
                Some(Weight::Frozen(b)) => ops::frozen_linear(x, w, Some(b))?,
                None => ops::frozen_linear(x, w, None)?,
            }
        };
        Ok(y)
    }

    // x: (n, in) -> (n, out)
    pub fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let Some(l) = &self.lora else { return self.base_forward(x) };
        if !ops::cpu_kernels_apply(x) {
            return self.lora_portable(x, ctx);
        }
        let p = if ctx.train { l.dropout } else { 0.0 };
        let dropout = if p > 0.0 {
            let start = ctx.rng.clone();
            ctx.rng.skip(ops::dropout_draws(x.elem_count()));
            Some((start, p))
        } else {
            None
        };
        let bias = match &self.bias {
            Some(Weight::Frozen(b)) => Some(b.clone()),
            Some(Weight::Trainable(_)) => return self.lora_portable(x, ctx),
            None => None,
        };
        let op = ops::LoraOp::new(self.weight.tensor().clone(), bias, l.scale, dropout);
        x.contiguous()?.apply_op3(l.a.as_tensor(), l.b.as_tensor(), op)
    }

    /// The LoRA forward from plain ops (the reference the fused op is tested against).
    pub fn lora_portable(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let y = self.base_forward(x)?;
        match &self.lora {
            None => Ok(y),
            Some(l) => {
                // (n, in) -> (n, r) -> (n, out)
                let h = ops::linear(&dropout(x, l.dropout, ctx)?, l.a.as_tensor(), true)?;
                let delta = ops::linear(&h, l.b.as_tensor(), true)?;
                y + (delta * l.scale)?
            }
        }
    }

    /// Attach a LoRA adapter: A ~ U(±1/√in) (PEFT's kaiming-uniform with a=√5), B = 0,
    /// so the adapted model starts exactly equal to the base.
    pub fn add_lora(&mut self, rank: usize, scale: f64, dropout: f64, rng: &mut Rng) -> Result<()> {
        let (fan_in, fan_out) = self.in_out();
        let w = self.weight.tensor();
        let bound = 1.0 / (fan_in as f64).sqrt();
        let a: Vec<f64> = (0..rank * fan_in).map(|_| (2.0 * rng.uniform() - 1.0) * bound).collect();
        let dt = master_dtype(w.dtype());
        let a = Tensor::from_vec(a, (rank, fan_in), w.device())?.to_dtype(dt)?;
        let b = Tensor::zeros((fan_out, rank), dt, w.device())?;
        self.lora = Some(LoraAdapter { a: Var::from_tensor(&a)?, b: Var::from_tensor(&b)?, scale, dropout });
        Ok(())
    }

    /// W + scale·B·A as a plain tensor (for merged inference and export).
    pub fn merged_weight(&self) -> Result<Tensor> {
        let w = self.weight.tensor();
        match &self.lora {
            None => Ok(w.clone()),
            Some(l) => {
                let ba = l.b.as_tensor().to_dtype(DType::F64)?.matmul(&l.a.as_tensor().to_dtype(DType::F64)?)?;
                (w.to_dtype(DType::F64)? + (ba * l.scale)?)?.to_dtype(w.dtype())
            }
        }
    }

    /// Fold the adapter into the weight (unmerged → merged inference).
    pub fn merge_lora(&mut self) -> Result<()> {
        if self.lora.is_some() {
            let merged = self.merged_weight()?;
            self.weight = Weight::Frozen(merged);
            self.lora = None;
        }
        Ok(())
    }
}
