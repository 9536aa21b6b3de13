//! Inference for the evaluation harness: batched generation with a KV cache (greedy,
//! temperature, top-p, seed, stop strings on decoded text, left padding) and batched
//! log-likelihood of (context, continuation) pairs. A LoRA adapter is applied unmerged
//! (its factors run beside the frozen weight) or merged, the caller's choice.
//!
//! The cache is preallocated per layer as (b, kv heads, capacity, head dim); each step
//! writes its new keys/values in place (`slice_set`) and attends over a narrowed view, so a
//! decode step costs the same at position 256 as at 16 apart from the attention itself.
use crate::base::error::{Error, Result};
use crate::base::rng::Rng;
use crate::config::DTypeName;
use crate::data;
use crate::io::checkpoint;
use crate::model::{norm, Llama};
use crate::nn::linear::ForwardCtx;
use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

#[derive(Serialize, Deserialize, Clone, Debug, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LoadRequest {
    /// Hugging Face model directory or .gguf file.
    pub model: String,
    /// PEFT adapter directory applied on top (empty: none).
    pub adapter: String,
    /// Fold the adapter into the weights (faster) rather than run it beside them.
    pub merged: bool,
    /// tokenizer.json or .gguf (empty: the model's own).
    pub tokenizer: String,
    pub dtype: DTypeName,
    /// cpu, or cuda / cuda:N in the sidecar's CUDA build.
    pub device: String,
}

impl Default for LoadRequest {
    fn default() -> Self {
        Self {
            model: String::new(),
            adapter: String::new(),
            merged: false,
            tokenizer: String::new(),
            dtype: DTypeName::F32,
            device: "cpu".into(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// Prompt plus generation, in tokens (bigcode's `max_length_generation`); 0: no limit.
    pub max_length: usize,
    /// 0: greedy.
    pub temperature: f64,
    pub top_p: f64,
    /// Prompt i samples from its own stream (seed, i): results do not depend on batching.
    pub seed: u64,
    /// Generation ends at the first of these in the decoded text (which is cut before it).
    pub stop: Vec<String>,
    pub batch_size: usize,
    /// Add the tokenizer's special tokens (BOS) to the prompt.
    pub add_special_tokens: bool,
    /// Use the KV cache (false: re-run the whole sequence every step; for tests and benches).
    pub cache: bool,
    /// Keep each prompt's last max_position_embeddings − max_new_tokens tokens, as lm-eval's
    /// generate_until left-truncates its contexts to max_length − max_gen_toks. Without it a
    /// prompt the model has no positions for is refused.
    pub truncate: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 128,
            max_length: 0,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop: vec![],
            batch_size: 8,
            add_special_tokens: false,
            cache: true,
            truncate: false,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct Generation {
    pub text: String,
    pub prompt_tokens: usize,
    /// Tokens generated (the stop string's tokens included).
    pub tokens: usize,
    /// "stop" (a stop string), "eos" (an end-of-sequence id) or "length".
    pub finish: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, schemars::JsonSchema)]
pub struct LoglikRequest {
    pub context: String,
    pub continuation: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct Loglik {
    /// Σ log p(continuation token | everything before it).
    pub logprob: f64,
    pub tokens: usize,
    /// Every continuation token is the argmax of its distribution.
    pub greedy: bool,
}

pub struct Engine {
    pub model: Llama,
    pub tok: Tokenizer,
    /// Generation ends at these ids.
    pub stop_ids: Vec<u32>,
    /// Fed where nothing real is: padding, and an empty context's single token.
    pub pad_id: u32,
    /// Cached rotary tables (positions 0..len), extended when a longer sequence comes.
    rope: std::sync::Mutex<(usize, Option<(Tensor, Tensor)>)>,
}

/// Per-layer keys and values, (b, kv, capacity, hd), filled to `len`.
pub struct KvCache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    pub len: usize,
    pub cap: usize,
}

impl KvCache {
    pub fn new(model: &Llama, b: usize, cap: usize) -> Result<Self> {
        let (kv, hd) = (model.cfg.kv_heads(), model.cfg.head_dim());
        let z = || Tensor::zeros((b, kv, cap, hd), model.dtype, &model.device);
        let n = model.layers.len();
        Ok(Self {
            k: (0..n).map(|_| z()).collect::<candle_core::Result<_>>()?,
            v: (0..n).map(|_| z()).collect::<candle_core::Result<_>>()?,
            len: 0,
            cap,
        })
    }
}

fn softmax_last(x: &Tensor) -> candle_core::Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&m)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

impl Engine {
    pub fn load(req: &LoadRequest) -> Result<Self> {
        let dtype = req.dtype.dtype();
        let (model, tok_path) = checkpoint::load_for_eval(&req.model, &req.adapter, req.merged, &req.tokenizer, dtype)?;
        Self::new(model.to_device(&crate::base::device::open(&req.device)?)?, data::load_tokenizer(&tok_path)?)
    }

    pub fn new(model: Llama, tok: Tokenizer) -> Result<Self> {
        let eos = data::eos_id(&tok, model.cfg.eos_id())?;
        let mut stop_ids = model.cfg.stop_ids();
        if !stop_ids.contains(&eos) {
            stop_ids.push(eos);
        }
        Ok(Self { model, tok, stop_ids, pad_id: eos, rope: Default::default() })
    }

    fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        Ok(self.tok.encode(text, special).map_err(|e| Error::Tokenizer(e.to_string()))?.get_ids().to_vec())
    }

    /// Tokens of a text without special tokens (prompt-length accounting).
    pub fn count_tokens(&self, text: &str) -> Result<usize> {
        Ok(self.encode(text, false)?.len())
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tok.decode(ids, true).map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// The text `gen` adds after `prompt`: decode(prompt + gen) minus decode(prompt), as the
    /// harnesses slice it. Decoding `gen` alone is wrong for SentencePiece vocabularies,
    /// whose decoder strips the first token's leading space (indentation, " 5").
    pub fn continuation_text(&self, prompt: &[u32], prompt_text: &str, gen: &[u32]) -> Result<String> {
        let mut all = Vec::with_capacity(prompt.len() + gen.len());
        all.extend_from_slice(prompt);
        all.extend_from_slice(gen);
        let full = self.decode(&all)?;
        match full.strip_prefix(prompt_text) {
            Some(rest) => Ok(rest.to_string()),
            None => self.decode(gen),
        }
    }

    /// cos and sin for positions 0..n, (n, hd) in the model's dtype.
    fn rope_tables(&self, n: usize) -> Result<(Tensor, Tensor)> {
        let mut c = self.rope.lock().map_err(|_| Error::Tokenizer("rope table lock poisoned".into()))?;
        if c.0 < n || c.1.is_none() {
            let n = n.next_power_of_two().max(64);
            let t = crate::model::rope_tables(&self.model.cfg, n)?;
            let hd = t.hd;
            let cos = Tensor::from_vec(t.cos.to_vec(), (n, hd), &self.model.device)?.to_dtype(self.model.dtype)?;
            let sin = Tensor::from_vec(t.sin.to_vec(), (n, hd), &self.model.device)?.to_dtype(self.model.dtype)?;
            *c = (n, Some((cos, sin)));
        }
        Ok(c.1.clone().expect("filled above"))
    }

    /// ids (b, t) at columns cache.len.. of rows left-padded by `pad[r]` -> final hidden
    /// states (b·t, d), normalized, keys and values appended to the cache.
    pub fn forward_cached(&self, ids: &Tensor, pad: &[usize], cache: &mut KvCache) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let m = &self.model;
        let cfg = &m.cfg;
        let (nh, kv, hd) = (cfg.num_attention_heads, cfg.kv_heads(), cfg.head_dim());
        let rep = nh / kv;
        let (start, total) = (cache.len, cache.len + t);
        if total > cache.cap {
            return Err(Error::config("generate", format!("{total} tokens exceed the cache's {}", cache.cap)));
        }
        let pos: Vec<u32> = (0..b).flat_map(|r| (start..total).map(move |c| c.saturating_sub(pad[r]) as u32)).collect();
        let (cos, sin) = self.rope_tables(total)?;
        let pos = Tensor::from_vec(pos, b * t, &self.model.device)?;
        let cos = cos.index_select(&pos, 0)?.reshape((b, 1, t, hd))?;
        let sin = sin.index_select(&pos, 0)?.reshape((b, 1, t, hd))?;
        let mut mask = Vec::with_capacity(b * t * total);
        for &p in pad.iter().take(b) {
            for q in start..total {
                // a pad column sees only itself: no row of -inf (NaN) to leak into the next layer
                mask.extend((0..total).map(|k| if (k >= p && k <= q) || k == q { 0f32 } else { f32::NEG_INFINITY }));
            }
        }
        let mask = Tensor::from_vec(mask, (b, 1, 1, t, total), &self.model.device)?.to_dtype(m.dtype)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut rng = Rng::new(0);
        let ctx = &mut ForwardCtx { train: false, rng: &mut rng };
        let mut x = m.embed_tokens.tensor().index_select(&ids.flatten_all()?, 0)?;
        for (l, layer) in m.layers.iter().enumerate() {
            let h = norm(&x, &layer.input_layernorm, cfg.rms_norm_eps)?;
            let a = &layer.self_attn;
            let q = a.q_proj.forward(&h, ctx)?.reshape((b, t, nh, hd))?.transpose(1, 2)?;
            let k = a.k_proj.forward(&h, ctx)?.reshape((b, t, kv, hd))?.transpose(1, 2)?;
            let v = a.v_proj.forward(&h, ctx)?.reshape((b, t, kv, hd))?.transpose(1, 2)?;
            let q = crate::nn::portable::rope(&q, &cos, &sin)?;
            let k = crate::nn::portable::rope(&k, &cos, &sin)?;
            cache.k[l].slice_set(&k.contiguous()?, 2, start)?;
            cache.v[l].slice_set(&v.contiguous()?, 2, start)?;
            let keys = cache.k[l].narrow(2, 0, total)?;
            let values = cache.v[l].narrow(2, 0, total)?;
            // grouped-query attention: the rep query heads of kv head j are adjacent
            let q = q.contiguous()?.reshape((b, kv, rep * t, hd))?;
            let s = (q.matmul(&keys.t()?)? * scale)?.reshape((b, kv, rep, t, total))?.broadcast_add(&mask)?;
            let p = softmax_last(&s)?.reshape((b, kv, rep * t, total))?;
            let y = p.matmul(&values)?.reshape((b, nh, t, hd))?.transpose(1, 2)?.reshape((b * t, nh * hd))?;
            x = (x + a.o_proj.forward(&y, ctx)?)?;
            let h = norm(&x, &layer.post_attention_layernorm, cfg.rms_norm_eps)?;
            x = (x + layer.mlp.forward(&h, ctx)?)?;
        }
        cache.len = total;
        Ok(norm(&x, &m.norm, cfg.rms_norm_eps)?)
    }

    /// Logits (n, V) of normalized hidden states (n, d).
    fn head(&self, h: &Tensor) -> Result<Tensor> {
        let w = self.model.lm_head.as_ref().unwrap_or(&self.model.embed_tokens);
        Ok(h.matmul(&w.tensor().t()?)?)
    }

    /// Generate a continuation of every prompt.
    pub fn generate(&self, prompts: &[String], o: &GenerateOptions) -> Result<Vec<Generation>> {
        if o.top_p <= 0.0 || o.top_p > 1.0 || o.temperature < 0.0 {
            return Err(Error::config(
                "generate",
                format!("temperature {} must be ≥ 0 and top_p {} in (0, 1]", o.temperature, o.top_p),
            ));
        }
        let mut out = Vec::with_capacity(prompts.len());
        let bs = o.batch_size.max(1);
        for (chunk_i, chunk) in prompts.chunks(bs).enumerate() {
            let ids: Vec<Vec<u32>> = chunk
                .iter()
                .enumerate()
                .map(|(i, p)| self.fit(self.encode(p, o.add_special_tokens)?, chunk_i * bs + i, o))
                .collect::<Result<_>>()?;
            let first = chunk_i * bs;
            out.extend(if o.cache {
                self.generate_batch(&ids, first, o)?
            } else {
                self.generate_reforward(&ids, first, o)?
            });
        }
        Ok(out)
    }

    /// A prompt within the model's positions: left-truncated with `o.truncate`, else refused
    /// when it leaves no position to generate in.
    fn fit(&self, mut ids: Vec<u32>, index: usize, o: &GenerateOptions) -> Result<Vec<u32>> {
        let max = self.model.cfg.max_position_embeddings;
        if max == 0 {
            return Ok(ids);
        }
        if o.truncate {
            let keep = max.saturating_sub(o.max_new_tokens).max(1);
            if ids.len() > keep {
                ids.drain(..ids.len() - keep);
            }
        } else if ids.len() >= max {
            return Err(Error::config(
                "generate",
                format!(
                    "prompt {index} has {} tokens, and the model has {max} positions (max_position_embeddings) (hint: a shorter prompt, or truncate: true to keep its last {} tokens as lm-eval does)",
                    ids.len(),
                    max.saturating_sub(o.max_new_tokens).max(1)
                ),
            ));
        }
        Ok(ids)
    }

    /// New tokens for a prompt: max_new_tokens, within max_length and the model's positions.
    fn budget(&self, prompt: usize, o: &GenerateOptions) -> usize {
        let by_length = if o.max_length > 0 { o.max_length.saturating_sub(prompt) } else { usize::MAX };
        let max = self.model.cfg.max_position_embeddings;
        let by_positions = if max > 0 { max.saturating_sub(prompt) } else { usize::MAX };
        o.max_new_tokens.min(by_length).min(by_positions)
    }

    fn generate_batch(&self, prompts: &[Vec<u32>], first: usize, o: &GenerateOptions) -> Result<Vec<Generation>> {
        let b = prompts.len();
        let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(0).max(1);
        let steps = prompts.iter().map(|p| self.budget(p.len(), o)).max().unwrap_or(0);
        let mut rows: Vec<Row> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| Row::new(self, p, self.budget(p.len(), o), Rng::fork(o.seed, (first + i) as u64)))
            .collect::<Result<_>>()?;
        if steps == 0 {
            return rows.into_iter().map(|r| r.finish(self)).collect();
        }
        let pad: Vec<usize> = prompts.iter().map(|p| longest - p.len().max(1)).collect();
        let mut flat = Vec::with_capacity(b * longest);
        for p in prompts {
            let p: &[u32] = if p.is_empty() { std::slice::from_ref(&self.pad_id) } else { p };
            flat.extend(std::iter::repeat_n(self.pad_id, longest - p.len()));
            flat.extend_from_slice(p);
        }
        let mut cache = KvCache::new(&self.model, b, longest + steps)?;
        let h = self.forward_cached(&Tensor::from_vec(flat, (b, longest), &self.model.device)?, &pad, &mut cache)?;
        let last: Vec<u32> = (0..b).map(|r| (r * longest + longest - 1) as u32).collect();
        let mut logits = self.head(&h.index_select(&Tensor::new(last.as_slice(), &self.model.device)?, 0)?)?;
        for _ in 0..steps {
            let rows_logits = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
            let mut next = Vec::with_capacity(b);
            for (row, l) in rows.iter_mut().zip(&rows_logits) {
                if !row.done {
                    let tok = row.sample(l, o);
                    row.push(tok, self, o)?;
                }
                next.push(row.ids.last().copied().unwrap_or(self.pad_id));
            }
            if rows.iter().all(|r| r.done) {
                break;
            }
            let h = self.forward_cached(&Tensor::from_vec(next, (b, 1), &self.model.device)?, &pad, &mut cache)?;
            logits = self.head(&h)?;
        }
        rows.into_iter().map(|r| r.finish(self)).collect()
    }

    /// The same generation without a cache: the whole sequence through the training
    /// forward pass at every step (rows of equal length batched together).
    fn generate_reforward(&self, prompts: &[Vec<u32>], first: usize, o: &GenerateOptions) -> Result<Vec<Generation>> {
        let mut rows: Vec<Row> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| Row::new(self, p, self.budget(p.len(), o), Rng::fork(o.seed, (first + i) as u64)))
            .collect::<Result<_>>()?;
        let mut seqs: Vec<Vec<u32>> =
            prompts.iter().map(|p| if p.is_empty() { vec![self.pad_id] } else { p.clone() }).collect();
        let mut rng = Rng::new(0);
        loop {
            let live: Vec<usize> = (0..rows.len()).filter(|&r| !rows[r].done).collect();
            if live.is_empty() {
                break;
            }
            // group live rows by length: one batched forward per length
            let mut groups: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
            for r in live {
                groups.entry(seqs[r].len()).or_default().push(r);
            }
            for (t, group) in groups {
                let flat: Vec<u32> = group.iter().flat_map(|&r| seqs[r].iter().copied()).collect();
                let ids = Tensor::from_vec(flat, (group.len(), t), &self.model.device)?;
                let logits = self.model.forward(&ids, &mut ForwardCtx { train: false, rng: &mut rng })?;
                let last: Vec<u32> = (0..group.len()).map(|i| (i * t + t - 1) as u32).collect();
                let logits = logits
                    .index_select(&Tensor::new(last.as_slice(), &self.model.device)?, 0)?
                    .to_dtype(DType::F32)?
                    .to_vec2::<f32>()?;
                for (&r, l) in group.iter().zip(&logits) {
                    let tok = rows[r].sample(l, o);
                    rows[r].push(tok, self, o)?;
                    seqs[r].push(tok);
                }
            }
        }
        rows.into_iter().map(|r| r.finish(self)).collect()
    }

    /// (context, continuation) -> (Σ log p, token count, greedy?), as lm-eval-harness
    /// 0.4's HFLM computes it: trailing spaces of the context move to the continuation;
    /// the continuation's tokens are those of encode(context + continuation) after the
    /// first len(encode(context)); an empty context is the end-of-text token; no BOS;
    /// sequences longer than the model's context keep their last max_position tokens.
    pub fn loglikelihood(&self, reqs: &[LoglikRequest], batch_size: usize) -> Result<Vec<Loglik>> {
        let max = self.model.cfg.max_position_embeddings.max(2);
        let mut enc: Vec<(Vec<u32>, usize)> = Vec::with_capacity(reqs.len()); // (tokens, continuation length)
        for r in reqs {
            let n_spaces = r.context.len() - r.context.trim_end().len();
            let (ctx, cont) = (
                &r.context[..r.context.len() - n_spaces],
                format!("{}{}", &r.context[r.context.len() - n_spaces..], r.continuation),
            );
            let (ctx_ids, cont_ids) = if ctx.is_empty() {
                (vec![self.pad_id], self.encode(&cont, false)?)
            } else {
                let whole = self.encode(&format!("{ctx}{cont}"), false)?;
                let c = self.encode(ctx, false)?.len().min(whole.len());
                (whole[..c].to_vec(), whole[c..].to_vec())
            };
            if cont_ids.is_empty() {
                return Err(Error::config(
                    "loglikelihood",
                    format!("continuation {:?} of context {:?} has no tokens of its own", r.continuation, r.context),
                ));
            }
            let mut all = ctx_ids;
            all.extend_from_slice(&cont_ids);
            let keep = all.len().min(max + 1);
            enc.push((all[all.len() - keep..].to_vec(), cont_ids.len().min(keep - 1)));
        }
        // Requests that share their context tokens (the choices of one question) share its
        // forward pass: the prefix once, its keys and values copied to each continuation.
        let mut groups: Vec<Vec<usize>> = vec![];
        let mut by_prefix: std::collections::HashMap<&[u32], usize> = std::collections::HashMap::new();
        for (i, (toks, n)) in enc.iter().enumerate() {
            let g = *by_prefix.entry(&toks[..toks.len() - n]).or_insert_with(|| {
                groups.push(vec![]);
                groups.len() - 1
            });
            groups[g].push(i);
        }
        // (a one-token prefix, such as an empty context's, saves nothing worth the copies)
        let (shared, single): (Vec<Vec<usize>>, Vec<Vec<usize>>) =
            groups.into_iter().partition(|g| g.len() > 1 && enc[g[0]].0.len() - enc[g[0]].1 > 1);
        // a group larger than a batch (more choices than the batch holds) goes in batch-sized parts
        // (longest continuations first, so each part pads little); then the longest prefixes first
        let mut shared: Vec<Vec<usize>> = shared
            .into_iter()
            .flat_map(|mut g| {
                g.sort_by_key(|&i| std::cmp::Reverse(enc[i].1));
                g.chunks(batch_size.max(1)).map(<[usize]>::to_vec).collect::<Vec<_>>()
            })
            .collect();
        let mut out = vec![Loglik { logprob: 0.0, tokens: 0, greedy: false }; reqs.len()];
        // longest first, so each batch pads little
        let mut order: Vec<usize> = single.into_iter().flatten().collect();
        order.sort_by_key(|&i| std::cmp::Reverse(enc[i].0.len()));
        for chunk in order.chunks(batch_size.max(1)) {
            let t = chunk.iter().map(|&i| enc[i].0.len() - 1).max().unwrap_or(1).max(1);
            let b = chunk.len();
            let mut flat = Vec::with_capacity(b * t);
            let (mut rows, mut targets) = (vec![], vec![]);
            for (r, &i) in chunk.iter().enumerate() {
                let (toks, n) = &enc[i];
                let input = &toks[..toks.len() - 1];
                flat.extend_from_slice(input);
                flat.extend(std::iter::repeat_n(self.pad_id, t - input.len()));
                for p in input.len() - n..input.len() {
                    rows.push((r * t + p) as u32);
                    targets.push(toks[p + 1]);
                }
            }
            // right padding: real tokens never see the pad columns after them
            let mut cache = KvCache::new(&self.model, b, t)?;
            let h =
                self.forward_cached(&Tensor::from_vec(flat, (b, t), &self.model.device)?, &vec![0; b], &mut cache)?;
            let h = h.index_select(&Tensor::from_vec(rows, targets.len(), &self.model.device)?, 0)?;
            let scored = self.score(&h, &targets)?;
            let mut k = 0;
            for &i in chunk {
                let n = enc[i].1;
                out[i] = sum_scores(&scored[k..k + n]);
                k += n;
            }
        }
        shared.sort_by_key(|g| std::cmp::Reverse(enc[g[0]].0.len() - enc[g[0]].1));
        let mut start = 0;
        while start < shared.len() {
            // as many questions as keep the continuations within the batch size (one at least)
            let (mut end, mut members) = (start, 0);
            while end < shared.len() && (end == start || members + shared[end].len() <= batch_size.max(1)) {
                members += shared[end].len();
                end += 1;
            }
            self.loglik_shared(&enc, &shared[start..end], &mut out)?;
            start = end;
        }
        Ok(out)
    }

    /// One batch of questions whose choices share a prefix: the prefixes left-padded through
    /// the model once, the cache's rows copied per choice, then the choices right-padded.
    fn loglik_shared(&self, enc: &[(Vec<u32>, usize)], groups: &[Vec<usize>], out: &mut [Loglik]) -> Result<()> {
        let dev = &self.model.device;
        let prefix = |i: usize| &enc[i].0[..enc[i].0.len() - enc[i].1];
        let tp = groups.iter().map(|g| prefix(g[0]).len()).max().unwrap_or(1);
        let tc = groups.iter().flatten().map(|&i| enc[i].1 - 1).max().unwrap_or(0);
        let (mut flat, mut pad) = (Vec::with_capacity(groups.len() * tp), Vec::with_capacity(groups.len()));
        for g in groups {
            let p = prefix(g[0]);
            pad.push(tp - p.len());
            flat.extend(std::iter::repeat_n(self.pad_id, tp - p.len()));
            flat.extend_from_slice(p);
        }
        let mut cache = KvCache::new(&self.model, groups.len(), tp + tc)?;
        let hp = self.forward_cached(&Tensor::from_vec(flat, (groups.len(), tp), dev)?, &pad, &mut cache)?;
        // the prefix's last hidden state predicts each choice's first token
        let owner: Vec<u32> =
            groups.iter().enumerate().flat_map(|(g, m)| std::iter::repeat_n(g as u32, m.len())).collect();
        let members: Vec<usize> = groups.iter().flatten().copied().collect();
        let last: Vec<u32> = owner.iter().map(|&g| g * tp as u32 + tp as u32 - 1).collect();
        let mut hidden = vec![hp.index_select(&Tensor::from_vec(last, members.len(), dev)?, 0)?];
        let mut firsts: Vec<u32> = members.iter().map(|&i| enc[i].0[enc[i].0.len() - enc[i].1]).collect();
        let mut rest_targets = vec![];
        if tc > 0 {
            let idx = Tensor::from_vec(owner.clone(), owner.len(), dev)?;
            let mut c2 = KvCache {
                k: cache.k.iter().map(|k| k.index_select(&idx, 0)).collect::<candle_core::Result<_>>()?,
                v: cache.v.iter().map(|v| v.index_select(&idx, 0)).collect::<candle_core::Result<_>>()?,
                len: tp,
                cap: tp + tc,
            };
            let (mut flat, mut rows) = (Vec::with_capacity(members.len() * tc), vec![]);
            for (r, &i) in members.iter().enumerate() {
                let (toks, n) = &enc[i];
                let cont = &toks[toks.len() - n..];
                flat.extend_from_slice(&cont[..n - 1]);
                flat.extend(std::iter::repeat_n(self.pad_id, tc - (n - 1)));
                for p in 0..n - 1 {
                    rows.push((r * tc + p) as u32);
                    rest_targets.push(cont[p + 1]);
                }
            }
            let mpad: Vec<usize> = owner.iter().map(|&g| pad[g as usize]).collect();
            let hc = self.forward_cached(&Tensor::from_vec(flat, (members.len(), tc), dev)?, &mpad, &mut c2)?;
            if !rows.is_empty() {
                hidden.push(hc.index_select(&Tensor::from_vec(rows, rest_targets.len(), dev)?, 0)?);
            }
        }
        let n_first = firsts.len();
        firsts.extend_from_slice(&rest_targets);
        let scored = self.score(&Tensor::cat(&hidden, 0)?, &firsts)?;
        let mut k = n_first;
        for (r, &i) in members.iter().enumerate() {
            let n = enc[i].1;
            let mut mine = vec![scored[r]];
            mine.extend_from_slice(&scored[k..k + n - 1]);
            k += n - 1;
            out[i] = sum_scores(&mine);
        }
        Ok(())
    }

    /// Per row of hidden states: log p(target) and whether the target is the argmax.
    fn score(&self, h: &Tensor, targets: &[u32]) -> Result<Vec<(f64, bool)>> {
        let logits = self.head(h)?.to_dtype(DType::F64)?;
        let m = logits.max_keepdim(D::Minus1)?;
        let lse =
            (logits.broadcast_sub(&m)?.exp()?.sum_keepdim(D::Minus1)?.log()? + &m)?.squeeze(1)?.to_vec1::<f64>()?;
        let arg = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let logits = logits.to_vec2::<f64>()?;
        Ok((0..targets.len()).map(|k| (logits[k][targets[k] as usize] - lse[k], arg[k] == targets[k])).collect())
    }
}

/// A continuation's Σ log p and greedy flag from its tokens' scores.
fn sum_scores(s: &[(f64, bool)]) -> Loglik {
    Loglik { logprob: s.iter().map(|x| x.0).sum(), tokens: s.len(), greedy: s.iter().all(|x| x.1) }
}

/// One prompt's generation state.
struct Row {
    prompt: Vec<u32>,
    prompt_text: String,
    prompt_tokens: usize,
    budget: usize,
    rng: Rng,
    ids: Vec<u32>,
    done: bool,
    finish: &'static str,
    /// Decoded text cut at the stop string, once found.
    cut: Option<String>,
}

impl Row {
    fn new(e: &Engine, prompt: &[u32], budget: usize, rng: Rng) -> Result<Self> {
        Ok(Self {
            prompt: prompt.to_vec(),
            prompt_text: e.decode(prompt)?,
            prompt_tokens: prompt.len(),
            budget,
            rng,
            ids: vec![],
            done: budget == 0,
            finish: "length",
            cut: None,
        })
    }

    fn text(&self, e: &Engine) -> Result<String> {
        e.continuation_text(&self.prompt, &self.prompt_text, &self.ids)
    }

    fn sample(&mut self, logits: &[f32], o: &GenerateOptions) -> u32 {
        if o.temperature == 0.0 {
            // greedy: the first maximum, as torch.argmax
            let mut best = 0;
            for (i, &v) in logits.iter().enumerate() {
                if v > logits[best] {
                    best = i;
                }
            }
            return best as u32;
        }
        let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let mut p: Vec<(f64, u32)> =
            logits.iter().enumerate().map(|(i, &l)| (((l as f64 - m) / o.temperature).exp(), i as u32)).collect();
        let z: f64 = p.iter().map(|x| x.0).sum();
        p.iter_mut().for_each(|x| x.0 /= z);
        p.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        // top-p (nucleus): the smallest prefix whose mass reaches top_p, at least one token
        let mut keep = 0;
        let mut mass = 0.0;
        while keep < p.len() && (keep == 0 || mass < o.top_p) {
            mass += p[keep].0;
            keep += 1;
        }
        let mut u = self.rng.uniform() * mass;
        for &(q, id) in &p[..keep] {
            if u < q {
                return id;
            }
            u -= q;
        }
        p[keep - 1].1
    }

    fn push(&mut self, tok: u32, e: &Engine, o: &GenerateOptions) -> Result<()> {
        if e.stop_ids.contains(&tok) {
            self.done = true;
            self.finish = "eos";
            return Ok(());
        }
        self.ids.push(tok);
        if !o.stop.is_empty() {
            let text = self.text(e)?;
            if let Some(at) = o.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
                self.cut = Some(text[..at].to_string());
                self.done = true;
                self.finish = "stop";
                return Ok(());
            }
        }
        if self.ids.len() >= self.budget {
            self.done = true;
        }
        Ok(())
    }

    fn finish(mut self, e: &Engine) -> Result<Generation> {
        let text = match self.cut.take() {
            Some(t) => t,
            None => self.text(e)?,
        };
        let tokens = self.ids.len() + usize::from(self.finish == "eos");
        Ok(Generation { text, prompt_tokens: self.prompt_tokens, tokens, finish: self.finish.to_string() })
    }
}
