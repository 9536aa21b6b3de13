//! The Llama-family decoder (Llama 2/3, Mistral, Qwen2 with qkv bias, SmolLM):
//! embedding, RMSNorm, rotary embeddings (with Llama-3 rope_scaling), grouped-query
//! attention with a causal mask and optional attention dropout, SwiGLU MLP, tied or
//! untied lm_head. Built from a Hugging Face config.json; weight names are HF keys.
//! Every op here has a backward (tests/gradcheck proves it layer by layer).
use crate::base::error::{Error, Result};
use crate::base::rng::Rng;
use crate::nn::linear::{dropout, ForwardCtx, Linear, Weight};
use crate::nn::ops;
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// What training makes trainable, in the model's own terms (as candle's models own a small
/// LoRA config): `run::train` makes one from the run config's `method`.
#[derive(Clone, Debug, PartialEq)]
pub enum Trainable {
    /// Every weight (full fine-tuning).
    All,
    /// These modules' weights and biases (full FT of chosen modules: the hybrid's second phase).
    Modules(Vec<String>),
    /// LoRA factors beside these modules' frozen weights.
    Lora { modules: Vec<String>, rank: usize, scale: f64, dropout: f64 },
}

// ------------------------------------------------------------------ config.json

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RopeScaling {
    #[serde(alias = "type")]
    pub rope_type: String,
    #[serde(default = "default_factor")]
    pub factor: f64,
    #[serde(default = "default_low_freq_factor")]
    pub low_freq_factor: f64,
    #[serde(default = "default_high_freq_factor")]
    pub high_freq_factor: f64,
    #[serde(default = "default_original_context")]
    pub original_max_position_embeddings: usize,
}
// transformers' defaults for a rope_scaling block that omits them (Llama 3.1 values)
fn default_factor() -> f64 {
    1.0
}
fn default_low_freq_factor() -> f64 {
    1.0
}
fn default_high_freq_factor() -> f64 {
    4.0
}
fn default_original_context() -> usize {
    8192
}

/// The fields of a Hugging Face config.json that a Llama-family model needs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "eps_default")]
    pub rms_norm_eps: f64,
    #[serde(default = "theta_default")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    /// transformers ≥ 5 writes rope_theta and the scaling here instead (`rope_parameters`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<serde_json::Value>,
    #[serde(default = "maxpos_default")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Llama's flag for q/k/v/o biases; Qwen2 always has q/k/v biases.
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default = "init_range_default")]
    pub initializer_range: f64,
    #[serde(default)]
    pub bos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    #[serde(default = "act_default")]
    pub hidden_act: String,
    /// End-of-sequence ids from generation_config.json beside config.json, when there is one
    /// (instruct models often list several there: generation stops at any of them).
    #[serde(skip)]
    pub generation_eos: Vec<u32>,
}

fn ids(v: Option<&serde_json::Value>) -> Vec<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_u64()).map(|v| v as u32).collect(),
        _ => vec![],
    }
}
fn eps_default() -> f64 {
    1e-6
}
fn theta_default() -> f64 {
    10_000.0
}
fn maxpos_default() -> usize {
    2048
}
fn init_range_default() -> f64 {
    0.02
}
fn act_default() -> String {
    "silu".into()
}

const SUPPORTED: [&str; 4] = ["llama", "mistral", "qwen2", ""];

impl LlamaConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
        let mut cfg: LlamaConfig = serde_json::from_str(&text)
            .map_err(|e| Error::file(path, format!("not a Llama-family config.json: {e}")))?;
        let gen = path.with_file_name("generation_config.json");
        if gen.is_file() {
            let g: serde_json::Value = serde_json::from_slice(&std::fs::read(&gen)?)
                .map_err(|e| Error::file(&gen, format!("not valid JSON: {e}")))?;
            cfg.generation_eos = ids(g.get("eos_token_id"));
        }
        if let Some(rp) = cfg.rope_parameters.clone() {
            if let Some(theta) = rp.get("rope_theta").and_then(|v| v.as_f64()) {
                cfg.rope_theta = theta;
            }
            let kind = rp.get("rope_type").and_then(|v| v.as_str()).unwrap_or("default");
            if kind != "default" && cfg.rope_scaling.is_none() {
                cfg.rope_scaling =
                    Some(serde_json::from_value(rp).map_err(|e| Error::file(path, format!("rope_parameters: {e}")))?);
            }
        }
        if !SUPPORTED.contains(&cfg.model_type.as_str()) {
            return Err(Error::file(
                path,
                format!(
                    "model_type `{}` (architectures {:?}) is not supported (hint: loralab trains the Llama family: llama, mistral, qwen2)",
                    cfg.model_type, cfg.architectures
                ),
            ));
        }
        if cfg.hidden_act != "silu" {
            return Err(Error::file(
                path,
                format!("hidden_act `{}` is not supported (hint: Llama-family models use silu)", cfg.hidden_act),
            ));
        }
        let kv = cfg.kv_heads();
        if !cfg.num_attention_heads.is_multiple_of(kv) {
            return Err(Error::file(
                path,
                format!(
                    "num_attention_heads {} is not a multiple of num_key_value_heads {kv}",
                    cfg.num_attention_heads
                ),
            ));
        }
        if cfg.head_dim.is_none() && !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
            return Err(Error::file(path, "hidden_size is not a multiple of num_attention_heads (hint: set head_dim)"));
        }
        Ok(cfg)
    }
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads)
    }
    pub fn qkv_bias(&self) -> bool {
        self.attention_bias || self.model_type == "qwen2"
    }
    pub fn o_bias(&self) -> bool {
        self.attention_bias && self.model_type != "qwen2"
    }
    /// The end-of-sequence id used between packed documents: config.json's (the first, if a
    /// list), else generation_config.json's.
    pub fn eos_id(&self) -> Option<u32> {
        ids(self.eos_token_id.as_ref()).first().or(self.generation_eos.first()).copied()
    }

    /// Every id generation stops at: config.json's and generation_config.json's, once each.
    pub fn stop_ids(&self) -> Vec<u32> {
        let mut out = ids(self.eos_token_id.as_ref());
        for id in &self.generation_eos {
            if !out.contains(id) {
                out.push(*id);
            }
        }
        out
    }
    /// Parameter count of the model (tied embeddings counted once).
    pub fn n_params(&self) -> usize {
        let (d, f, hd) = (self.hidden_size, self.intermediate_size, self.head_dim());
        let (nh, kv) = (self.num_attention_heads, self.kv_heads());
        let attn = d * nh * hd * 2 + d * kv * hd * 2;
        let layer = attn + 3 * d * f + 2 * d;
        self.vocab_size * d * if self.tie_word_embeddings { 1 } else { 2 } + self.num_hidden_layers * layer + d
    }

    /// Inverse frequencies of the rotary embedding, Llama-3 scaling applied.
    pub fn inv_freq(&self) -> Result<Vec<f64>> {
        let hd = self.head_dim();
        let mut f: Vec<f64> = (0..hd / 2).map(|i| 1.0 / self.rope_theta.powf(2.0 * i as f64 / hd as f64)).collect();
        if let Some(s) = &self.rope_scaling {
            match s.rope_type.as_str() {
                "llama3" => {
                    let old = s.original_max_position_embeddings as f64;
                    let (lo_wl, hi_wl) = (old / s.low_freq_factor, old / s.high_freq_factor);
                    for v in f.iter_mut() {
                        let wl = 2.0 * std::f64::consts::PI / *v;
                        if wl > lo_wl {
                            *v /= s.factor;
                        } else if wl >= hi_wl {
                            let smooth = (old / wl - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                            *v = (1.0 - smooth) * *v / s.factor + smooth * *v;
                        }
                    }
                }
                "linear" => f.iter_mut().for_each(|v| *v /= s.factor),
                "default" => {}
                other => {
                    return Err(Error::config(
                        "model rope_scaling.rope_type",
                        format!("`{other}` is not supported (hint: llama3, linear or default)"),
                    ))
                }
            }
        }
        Ok(f)
    }
}

// ------------------------------------------------------------------ layers

pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
}

pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

pub struct Block {
    pub input_layernorm: Weight,
    pub self_attn: Attention,
    pub post_attention_layernorm: Weight,
    pub mlp: Mlp,
}

pub struct Llama {
    pub cfg: LlamaConfig,
    pub embed_tokens: Weight,
    pub layers: Vec<Block>,
    pub norm: Weight,
    /// None when tied to the embedding.
    pub lm_head: Option<Weight>,
    pub attention_dropout: f64,
    pub dtype: DType,
    pub device: Device,
    /// Rotary tables for the last sequence length seen (recomputing them cost ~1 % of a step).
    rope_cache: std::sync::Mutex<Option<ops::RopeTables>>,
}

/// The rotary tables for positions 0..t (frequencies repeated as HF does).
pub fn rope_tables(cfg: &LlamaConfig, t: usize) -> Result<ops::RopeTables> {
    Ok(ops::RopeTables::new(&cfg.inv_freq()?, t))
}

pub fn norm(x: &Tensor, w: &Weight, eps: f64) -> candle_core::Result<Tensor> {
    ops::rms_norm(x, w.tensor(), eps, w.is_trainable())
}

impl Attention {
    // x: (b·t, d) -> (b·t, d)
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        x: &Tensor,
        b: usize,
        t: usize,
        cfg: &LlamaConfig,
        rope: &ops::RopeTables,
        p_drop: f64,
        ctx: &mut ForwardCtx,
    ) -> candle_core::Result<Tensor> {
        let (nh, kv, hd) = (cfg.num_attention_heads, cfg.kv_heads(), cfg.head_dim());
        let rep = nh / kv;
        let q = self.q_proj.forward(x, ctx)?.reshape((b, t, nh, hd))?.transpose(1, 2)?; // (b, nh, t, hd)
        let k = self.k_proj.forward(x, ctx)?.reshape((b, t, kv, hd))?.transpose(1, 2)?; // (b, kv, t, hd)
        let v = self.v_proj.forward(x, ctx)?.reshape((b, t, kv, hd))?.transpose(1, 2)?.contiguous()?;
        // grouped-query attention without copying k and v: the rep query heads of kv head j
        // are adjacent, so q regroups to (b, kv, rep·t, hd) and every kv head is used once
        let (q, k) = (rope.apply(&q)?, rope.apply(&k)?);
        let scale = 1.0 / (hd as f64).sqrt();
        if p_drop == 0.0 {
            if let Some(y) = ops::flash_attention(&q, &k, &v, scale)? {
                return self.o_proj.forward(&y.transpose(1, 2)?.reshape((b * t, nh * hd))?, ctx);
            }
        }
        let q = q.reshape((b, kv, rep * t, hd))?;
        let scores = q.matmul(&k.t()?)?; // (b, kv, rep·t, t)
        let p = ops::causal_softmax(&scores, scale)?;
        let p = dropout(&p, p_drop, ctx)?;
        let y = p.matmul(&v)?.reshape((b, nh, t, hd))?.transpose(1, 2)?.reshape((b * t, nh * hd))?;
        self.o_proj.forward(&y, ctx)
    }
}

impl Mlp {
    // x: (n, d) -> (n, d); SwiGLU: down(silu(gate(x)) · up(x))
    pub fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> candle_core::Result<Tensor> {
        let g = self.gate_proj.forward(x, ctx)?;
        let u = self.up_proj.forward(x, ctx)?;
        self.down_proj.forward(&ops::swiglu(&g, &u)?, ctx)
    }
}

impl Llama {
    /// Build from named tensors with Hugging Face keys; every weight starts frozen.
    pub fn from_tensors(cfg: LlamaConfig, mut w: HashMap<String, Tensor>, dtype: DType, source: &Path) -> Result<Self> {
        let device = Device::Cpu;
        let mut take = |name: &str| -> Result<Tensor> {
            let t = w.remove(name).ok_or_else(|| Error::MissingTensor { path: source.into(), name: name.into() })?;
            Ok(t.to_dtype(dtype)?)
        };
        let embed = take("model.embed_tokens.weight")?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let mut lin = |m: &str, bias: bool| -> Result<Linear> {
                let name = format!("{p}.{m}");
                let wt = take(&format!("{name}.weight"))?;
                let b = if bias { Some(take(&format!("{name}.bias"))?) } else { None };
                Ok(Linear::new(name, wt, b))
            };
            let (qb, ob) = (cfg.qkv_bias(), cfg.o_bias());
            let self_attn = Attention {
                q_proj: lin("self_attn.q_proj", qb)?,
                k_proj: lin("self_attn.k_proj", qb)?,
                v_proj: lin("self_attn.v_proj", qb)?,
                o_proj: lin("self_attn.o_proj", ob)?,
            };
            let mlp = Mlp {
                gate_proj: lin("mlp.gate_proj", false)?,
                up_proj: lin("mlp.up_proj", false)?,
                down_proj: lin("mlp.down_proj", false)?,
            };
            layers.push(Block {
                input_layernorm: Weight::Frozen(take(&format!("{p}.input_layernorm.weight"))?),
                self_attn,
                post_attention_layernorm: Weight::Frozen(take(&format!("{p}.post_attention_layernorm.weight"))?),
                mlp,
            });
        }
        let norm = Weight::Frozen(take("model.norm.weight")?);
        let lm_head = if cfg.tie_word_embeddings { None } else { Some(Weight::Frozen(take("lm_head.weight")?)) };
        Ok(Self {
            cfg,
            embed_tokens: Weight::Frozen(embed),
            layers,
            norm,
            lm_head,
            attention_dropout: 0.0,
            dtype,
            device,
            rope_cache: Default::default(),
        })
    }

    /// Random initialisation as Hugging Face does: N(0, initializer_range) for
    /// matrices, ones for norms, zeros for biases.
    pub fn random(cfg: LlamaConfig, dtype: DType, rng: &mut Rng) -> Result<Self> {
        let mut w = HashMap::new();
        for (name, shape) in hf_shapes(&cfg) {
            let n: usize = shape.iter().product();
            let t = if name.ends_with("norm.weight") {
                Tensor::ones(shape, DType::F64, &Device::Cpu)?
            } else if name.ends_with(".bias") {
                Tensor::zeros(shape, DType::F64, &Device::Cpu)?
            } else {
                let v: Vec<f64> = (0..n).map(|_| rng.normal() * cfg.initializer_range).collect();
                Tensor::from_vec(v, shape, &Device::Cpu)?
            };
            w.insert(name, t);
        }
        Self::from_tensors(cfg, w, dtype, Path::new("<random init>"))
    }

    /// Move every weight to `device` (before the method makes any of them trainable).
    pub fn to_device(mut self, device: &Device) -> Result<Self> {
        if self.device.same_device(device) {
            return Ok(self);
        }
        for w in self.weights_mut() {
            if let Weight::Frozen(t) = w {
                *t = t.to_device(device)?;
            } else {
                return Err(Error::config(
                    "train.device",
                    "weights must move to the device before the method is applied (a loralab bug)",
                ));
            }
        }
        // an evaluated adapter (unmerged) moves with its base
        for lin in self.linears_mut() {
            if let Some(l) = &mut lin.lora {
                l.a = Var::from_tensor(&l.a.as_tensor().to_device(device)?)?;
                l.b = Var::from_tensor(&l.b.as_tensor().to_device(device)?)?;
            }
        }
        self.device = device.clone();
        Ok(self)
    }

    pub fn linears(&self) -> Vec<&Linear> {
        self.layers
            .iter()
            .flat_map(|l| {
                [
                    &l.self_attn.q_proj,
                    &l.self_attn.k_proj,
                    &l.self_attn.v_proj,
                    &l.self_attn.o_proj,
                    &l.mlp.gate_proj,
                    &l.mlp.up_proj,
                    &l.mlp.down_proj,
                ]
            })
            .collect()
    }

    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        self.layers
            .iter_mut()
            .flat_map(|l| {
                let a = &mut l.self_attn;
                let m = &mut l.mlp;
                [
                    &mut a.q_proj,
                    &mut a.k_proj,
                    &mut a.v_proj,
                    &mut a.o_proj,
                    &mut m.gate_proj,
                    &mut m.up_proj,
                    &mut m.down_proj,
                ]
            })
            .collect()
    }

    /// Every base weight with its Hugging Face key, in a fixed order.
    pub fn named_weights(&self) -> Vec<(String, &Weight)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), &self.embed_tokens)];
        for (i, l) in self.layers.iter().enumerate() {
            out.push((format!("model.layers.{i}.input_layernorm.weight"), &l.input_layernorm));
            out.push((format!("model.layers.{i}.post_attention_layernorm.weight"), &l.post_attention_layernorm));
        }
        for lin in self.linears() {
            out.push((format!("{}.weight", lin.name), &lin.weight));
            if let Some(b) = &lin.bias {
                out.push((format!("{}.bias", lin.name), b));
            }
        }
        out.push(("model.norm.weight".to_string(), &self.norm));
        if let Some(h) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), h));
        }
        out
    }

    fn weights_mut(&mut self) -> Vec<&mut Weight> {
        let mut out = vec![&mut self.embed_tokens, &mut self.norm];
        if let Some(h) = &mut self.lm_head {
            out.push(h);
        }
        for l in &mut self.layers {
            out.push(&mut l.input_layernorm);
            out.push(&mut l.post_attention_layernorm);
            let a = &mut l.self_attn;
            let m = &mut l.mlp;
            for lin in [
                &mut a.q_proj,
                &mut a.k_proj,
                &mut a.v_proj,
                &mut a.o_proj,
                &mut m.gate_proj,
                &mut m.up_proj,
                &mut m.down_proj,
            ] {
                out.push(&mut lin.weight);
                if let Some(b) = &mut lin.bias {
                    out.push(b);
                }
            }
        }
        out
    }

    /// The method decides which weights train; nothing else differs between methods.
    pub fn apply_method<T: TryInto<Trainable, Error = Error>>(&mut self, m: T, rng: &mut Rng) -> Result<()> {
        match m.try_into()? {
            Trainable::All => {
                for w in self.weights_mut() {
                    w.unfreeze()?;
                }
            }
            Trainable::Modules(targets) => {
                for lin in self.linears_mut() {
                    let module = lin.name.rsplit('.').next().unwrap_or_default().to_string();
                    if targets.contains(&module) {
                        lin.weight.unfreeze()?;
                        if let Some(b) = &mut lin.bias {
                            b.unfreeze()?;
                        }
                    }
                }
            }
            Trainable::Lora { modules, rank, scale, dropout } => {
                for lin in self.linears_mut() {
                    let module = lin.name.rsplit('.').next().unwrap_or_default().to_string();
                    if modules.contains(&module) {
                        lin.add_lora(rank, scale, dropout, rng)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Trainable tensors with their save names: HF keys (full) or PEFT keys (LoRA), in a fixed order.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        let mut out = vec![];
        for (name, w) in self.named_weights() {
            if let Weight::Trainable(v) = w {
                out.push((name, v.clone()));
            }
        }
        for lin in self.linears() {
            if let Some(l) = &lin.lora {
                out.push((peft_key(&lin.name, "A"), l.a.clone()));
                out.push((peft_key(&lin.name, "B"), l.b.clone()));
            }
        }
        out
    }

    /// ids: (b, t) u32 -> logits (b·t, vocab)
    pub fn forward(&self, ids: &Tensor, ctx: &mut ForwardCtx) -> candle_core::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let rope = self.rope(t)?;
        let mut x = self.embed(ids)?;
        for l in &self.layers {
            x = self.block(l, &x, b, t, &rope, ctx)?;
        }
        self.head(&x)
    }

    /// The rotary tables for t positions (cached for the last t).
    fn rope(&self, t: usize) -> candle_core::Result<ops::RopeTables> {
        let mut cache = self.rope_cache.lock().map_err(|_| candle_core::Error::Msg("rope cache poisoned".into()))?;
        Ok(match cache.as_ref() {
            Some(r) if r.t == t => r.clone(),
            _ => {
                let r = rope_tables(&self.cfg, t).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                *cache = Some(r.clone());
                r
            }
        })
    }

    /// ids (b, t) -> x (b·t, d); a trained embedding is an f32 master: the activations are in the model's dtype.
    fn embed(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        self.embed_tokens.tensor().index_select(&ids.flatten_all()?, 0)?.to_dtype(self.dtype)
    }

    /// One transformer block on the residual stream x (b·t, d).
    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        l: &Block,
        x: &Tensor,
        b: usize,
        t: usize,
        rope: &ops::RopeTables,
        ctx: &mut ForwardCtx,
    ) -> candle_core::Result<Tensor> {
        let (cfg, p_drop) = (&self.cfg, if ctx.train { self.attention_dropout } else { 0.0 });
        let h = norm(x, &l.input_layernorm, cfg.rms_norm_eps)?;
        let x = (x + l.self_attn.forward(&h, b, t, cfg, rope, p_drop, ctx)?)?;
        let h = norm(&x, &l.post_attention_layernorm, cfg.rms_norm_eps)?;
        x + l.mlp.forward(&h, ctx)?
    }

    /// Final norm and LM head: x (b·t, d) -> logits (b·t, vocab).
    fn head(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = norm(x, &self.norm, self.cfg.rms_norm_eps)?;
        let head = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        ops::linear(&x, head.tensor(), head.is_trainable())
    }

    /// One micro-batch's masked loss and the gradients of `params` (None: a parameter this
    /// batch did not reach). With `checkpointing`, only each block's input is kept from the
    /// forward pass; the backward pass recomputes one block at a time from it (with the same
    /// dropout masks: the RNG is replayed from the block's start), so activation memory is
    /// one block's plus the block inputs instead of every block's (STUDY: long sequences).
    #[allow(clippy::too_many_arguments)]
    pub fn loss_and_grads(
        &self,
        ids: &Tensor,
        targets: &[u32],
        mask: &[f64],
        denom: f64,
        ctx: &mut ForwardCtx,
        params: &[(String, Var)],
        checkpointing: bool,
    ) -> candle_core::Result<(f64, Vec<Option<Tensor>>)> {
        let scalar = |loss: &Tensor| -> candle_core::Result<f64> { loss.to_dtype(DType::F64)?.to_scalar::<f64>() };
        let mut grads: Vec<Option<Tensor>> = vec![None; params.len()];
        let take =
            |g: &mut candle_core::backprop::GradStore, grads: &mut Vec<Option<Tensor>>| -> candle_core::Result<()> {
                for (acc, (_, v)) in grads.iter_mut().zip(params) {
                    if let Some(gi) = g.remove(v.as_tensor()) {
                        *acc = Some(match acc.take() {
                            None => gi,
                            Some(a) => (a + gi)?,
                        });
                    }
                }
                Ok(())
            };
        if !checkpointing {
            let loss = masked_loss(&self.forward(ids, ctx)?, targets, mask, denom)?;
            let value = scalar(&loss)?;
            take(&mut loss.backward()?, &mut grads)?;
            return Ok((value, grads));
        }
        let (b, t) = ids.dims2()?;
        let rope = self.rope(t)?;
        // forward: keep each block's input (detached: its graph is dropped) and the RNG there
        let mut inputs = Vec::with_capacity(self.layers.len());
        let mut x = self.embed(ids)?.detach();
        for l in &self.layers {
            inputs.push((x.clone(), ctx.rng.clone()));
            x = self.block(l, &x, b, t, &rope, ctx)?.detach();
        }
        // the head, with the gradient of its input
        let x = Var::from_tensor(&x)?;
        let loss = masked_loss(&self.head(x.as_tensor())?, targets, mask, denom)?;
        let value = scalar(&loss)?;
        let mut g = loss.backward()?;
        take(&mut g, &mut grads)?;
        // gradients carry their own graph in candle (a norm's dx is built from its weight):
        // detached, or the next surrogate's backward would run through it into that weight
        let mut dx = g
            .remove(x.as_tensor())
            .ok_or_else(|| candle_core::Error::Msg("checkpointing: no gradient reached the head's input".into()))?
            .detach();
        // backward, one block at a time: recompute it, then backpropagate Σ(y ⊙ dy)
        for (l, (x_in, rng)) in self.layers.iter().zip(inputs).rev() {
            let x_in = Var::from_tensor(&x_in)?;
            let mut rng = rng;
            let y =
                self.block(l, x_in.as_tensor(), b, t, &rope, &mut ForwardCtx { train: ctx.train, rng: &mut rng })?;
            let mut g = (y * &dx)?.sum_all()?.backward()?;
            take(&mut g, &mut grads)?;
            dx = g
                .remove(x_in.as_tensor())
                .ok_or_else(|| candle_core::Error::Msg("checkpointing: no gradient reached a block's input".into()))?
                .detach();
        }
        if self.embed_tokens.is_trainable() {
            let mut g = (self.embed(ids)? * &dx)?.sum_all()?.backward()?;
            take(&mut g, &mut grads)?;
        }
        Ok((value, grads))
    }

    /// Fold every adapter into its weight.
    pub fn merge_lora(&mut self) -> Result<()> {
        for lin in self.linears_mut() {
            lin.merge_lora()?;
        }
        Ok(())
    }
}

pub fn peft_key(module: &str, ab: &str) -> String {
    format!("base_model.model.{module}.lora_{ab}.weight")
}

/// Hugging Face key and shape of every weight of the config's model.
pub fn hf_shapes(cfg: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let (d, f, hd, nh, kv) =
        (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim(), cfg.num_attention_heads, cfg.kv_heads());
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![cfg.vocab_size, d])];
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        out.push((format!("{p}.input_layernorm.weight"), vec![d]));
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![d]));
        for (m, o, inp) in
            [("q_proj", nh * hd, d), ("k_proj", kv * hd, d), ("v_proj", kv * hd, d), ("o_proj", d, nh * hd)]
        {
            out.push((format!("{p}.self_attn.{m}.weight"), vec![o, inp]));
            let bias = if m == "o_proj" { cfg.o_bias() } else { cfg.qkv_bias() };
            if bias {
                out.push((format!("{p}.self_attn.{m}.bias"), vec![o]));
            }
        }
        out.push((format!("{p}.mlp.gate_proj.weight"), vec![f, d]));
        out.push((format!("{p}.mlp.up_proj.weight"), vec![f, d]));
        out.push((format!("{p}.mlp.down_proj.weight"), vec![d, f]));
    }
    out.push(("model.norm.weight".to_string(), vec![d]));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![cfg.vocab_size, d]));
    }
    out
}

/// Masked next-token loss: Σ −log p(target)·mask / denom. logits (n, V), targets and
/// mask (n). `denom` is the loss-token count of the whole global batch, so accumulated
/// micro-batches sum to exactly the big batch's mean loss.
pub fn masked_loss(logits: &Tensor, targets: &[u32], mask: &[f64], denom: f64) -> candle_core::Result<Tensor> {
    ops::masked_nll(logits, targets.to_vec(), mask.iter().map(|m| m / denom).collect())
}
