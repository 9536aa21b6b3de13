//! Held-out loss of a model (optionally with a LoRA adapter, merged or not) on a data
//! file: the tiny laboratory's learning and forgetting measure. Called by the binding.
use crate::base::error::Result;
use crate::base::rng::Rng;
use crate::config::{DTypeName, DataConfig};
use crate::data;
use crate::io::checkpoint;
use crate::model::masked_loss;
use crate::nn::linear::ForwardCtx;
use crate::run::train::micro_batch;
use candle_core::DType;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EvalLossRequest {
    /// Hugging Face model directory.
    pub model: String,
    /// PEFT adapter directory applied on top (empty: none).
    pub adapter: String,
    /// Fold the adapter into the weights before evaluating (same numbers, faster).
    pub merged: bool,
    /// tokenizer.json (empty: `<model>/tokenizer.json`).
    pub tokenizer: String,
    pub data: DataConfig,
    pub micro_batch: usize,
    pub dtype: DTypeName,
}

impl Default for EvalLossRequest {
    fn default() -> Self {
        Self {
            model: String::new(),
            adapter: String::new(),
            merged: false,
            tokenizer: String::new(),
            data: DataConfig::default(),
            micro_batch: 8,
            dtype: DTypeName::F32,
        }
    }
}

#[derive(Serialize, Clone, Debug, schemars::JsonSchema)]
pub struct EvalLoss {
    /// Mean next-token loss over the loss tokens (nats).
    pub loss: f64,
    pub loss_tokens: f64,
    pub rows: usize,
}

pub fn eval_loss(req: &EvalLossRequest) -> Result<EvalLoss> {
    let dtype = req.dtype.dtype();
    let (model, tok_path) = checkpoint::load_for_eval(&req.model, &req.adapter, req.merged, &req.tokenizer, dtype)?;
    let tok = data::load_tokenizer(&tok_path)?;
    let eos = data::eos_id(&tok, model.cfg.eos_id())?;
    let chat = crate::io::chat::ChatTemplate::find(&req.model)?;
    let shards = data::prepare(&req.data, &tok, &tok_path, eos, chat.as_ref())?;
    let rows: Vec<usize> = (0..shards.rows).collect();
    let mut rng = Rng::new(0);
    let (mut sum, mut count) = (0.0, 0.0);
    for chunk in rows.chunks(req.micro_batch.max(1)) {
        let mb = micro_batch(&shards, chunk, &model.device)?;
        let logits = model.forward(&mb.ids, &mut ForwardCtx { train: false, rng: &mut rng })?;
        sum += masked_loss(&logits, &mb.targets, &mb.mask, 1.0)?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        count += mb.loss_tokens;
    }
    Ok(EvalLoss { loss: sum / count.max(1.0), loss_tokens: count, rows: shards.rows })
}
