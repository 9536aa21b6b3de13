//! `bun run bench train`: full FT vs LoRA r=16 (all modules) side by side in one process,
//! on two model shapes: tokens/s, step time, peak memory and a memory breakdown next to a
//! simple memory model's prediction, and the achieved GFLOP/s of a training step against a
//! plain large matmul measured in the same run (this machine is noisy: ratios, not absolutes).
use candle_core::{DType, Device, Tensor};
use loralab_core::config::{MethodConfig, MethodKind, OptimConfig, Targets};
use loralab_core::linear::ForwardCtx;
use loralab_core::model::{masked_loss, Llama, LlamaConfig};
use loralab_core::optim::{clip_grad_norm, Optimizer};
use loralab_core::rng::Rng;
use std::time::Instant;

#[path = "common/alloc.rs"]
mod alloc;
use alloc::{cur, mib, peak, reset_peak};

// ------------------------------------------------------------------ shapes

struct Shape {
    label: &'static str,
    cfg: LlamaConfig,
    batch: usize,
    seq: usize,
}

fn llama(v: usize, d: usize, f: usize, l: usize, nh: usize, kv: usize) -> LlamaConfig {
    serde_json::from_value(serde_json::json!({
        "model_type": "llama", "vocab_size": v, "hidden_size": d, "intermediate_size": f, "num_hidden_layers": l,
        "num_attention_heads": nh, "num_key_value_heads": kv, "tie_word_embeddings": true, "eos_token_id": 1
    }))
    .expect("static config")
}

fn lora16() -> MethodConfig {
    MethodConfig {
        kind: MethodKind::Lora,
        rank: 16,
        alpha: Some(32.0),
        dropout: 0.05,
        targets: Targets::Preset("all".into()),
        rslora: false,
    }
}

// ------------------------------------------------------------------ the memory model

struct Predicted {
    weights: f64,
    grads: f64,
    state: f64,
    activations: f64,
    /// The step's transient beyond the above: clipping rescales one gradient at a time into a
    /// new tensor (the optimizer itself updates in place), so one copy of the largest.
    step_work: f64,
}

/// Bytes the engine should hold, from the shapes alone (f32). Activations: the tensors
/// the forward pass keeps for backward, counted from model.rs and linear.rs.
fn predict(
    cfg: &LlamaConfig,
    m: &MethodConfig,
    b: usize,
    t: usize,
    trainable: usize,
    adapter: usize,
    largest: usize,
) -> Predicted {
    let (d, f, v, l) =
        (cfg.hidden_size as f64, cfg.intermediate_size as f64, cfg.vocab_size as f64, cfg.num_hidden_layers as f64);
    let (nh, kv, hd) = (cfg.num_attention_heads as f64, cfg.kv_heads() as f64, cfg.head_dim() as f64);
    let n = (b * t) as f64;
    let (q, kvd) = (nh * hd, kv * hd);
    let scores = b as f64 * nh * (t * t) as f64;
    // per layer: residual in, norm, q/k/v, v copy, rope copies+outputs of q and k, scores, P,
    // attention output + its copy, o_proj, residual, norm, gate, silu, up, gate·up, down, residual
    let layer = n * d
        + n * d
        + n * (q + 2.0 * kvd)
        + n * kvd
        + 2.0 * n * (q + kvd)
        + 2.0 * scores
        + 2.0 * n * q
        + n * d
        + n * d
        + n * d
        + 4.0 * n * f
        + n * d
        + n * d;
    // LoRA adds nothing here: the fused op (ops::LoraOp) keeps only its inputs
    let _ = m;
    let acts = l * layer + n * d + n * v;
    Predicted {
        weights: 4.0 * (cfg.n_params() + adapter) as f64,
        grads: 4.0 * trainable as f64,
        state: 4.0 * trainable as f64,
        activations: 4.0 * acts,
        step_work: 4.0 * largest as f64,
    }
}

// ------------------------------------------------------------------ one method on one shape

struct Measured {
    step_s: f64,
    tokens_per_s: f64,
    weights: f64,
    state: f64,
    activations: f64,
    grads: f64,
    peak: f64,
    flops: f64,
    pred: Predicted,
    trainable: usize,
}

fn batch(cfg: &LlamaConfig, b: usize, t: usize, seed: u64) -> (Tensor, Vec<u32>, Vec<f64>) {
    let mut r = Rng::new(seed);
    let ids: Vec<u32> = (0..b * t).map(|_| (r.next_u64() % cfg.vocab_size as u64) as u32).collect();
    let targets = ids[1..].iter().copied().chain([0]).collect();
    (Tensor::from_vec(ids, (b, t), &Device::Cpu).expect("ids"), targets, vec![1.0; b * t])
}

struct Runner {
    model: Llama,
    params: Vec<(String, candle_core::Var)>,
    opt: Optimizer,
    rng: Rng,
    weights: f64,
    state: f64,
    trainable: usize,
    adapter: usize,
}

fn setup(s: &Shape, method: &MethodConfig) -> candle_core::Result<Runner> {
    let err = |e: loralab_core::Error| candle_core::Error::Msg(e.to_string());
    let base = cur();
    let mut model = Llama::random(s.cfg.clone(), DType::F32, &mut Rng::new(1)).map_err(err)?;
    model.apply_method(method, &mut Rng::new(2)).map_err(err)?;
    let weights = (cur() - base) as f64;
    let params = model.trainable();
    let trainable: usize = params.iter().map(|(_, v)| v.elem_count()).sum();
    let adapter = if method.kind == MethodKind::Lora { trainable } else { 0 };
    let before_opt = cur();
    let opt = Optimizer::new(&OptimConfig::default(), 1e-4, &params)?;
    let state = (cur() - before_opt) as f64;
    Ok(Runner { model, params, opt, rng: Rng::new(3), weights, state, trainable, adapter })
}

/// One training step exactly as the loop does it; returns (seconds, heap after forward,
/// heap after backward with the graph dropped), heap relative to the step's start.
fn step(r: &mut Runner, s: &Shape, i: usize) -> candle_core::Result<(f64, f64, f64)> {
    let (ids, targets, mask) = batch(&s.cfg, s.batch, s.seq, i as u64);
    let start_mem = cur();
    let t0 = Instant::now();
    let logits = r.model.forward(&ids, &mut ForwardCtx { train: true, rng: &mut r.rng })?;
    let loss = masked_loss(&logits, &targets, &mask, (s.batch * s.seq) as f64)?;
    let after_fwd = cur();
    let mut g = loss.backward()?;
    drop((loss, logits));
    let after_bwd = cur();
    let mut gs: Vec<Tensor> = r.params.iter().map(|(_, v)| g.remove(v.as_tensor()).expect("grad")).collect();
    drop(g);
    clip_grad_norm(&mut gs, 1.0)?;
    r.opt.step(&r.params, &gs, 1e-4, i + 1)?;
    Ok((t0.elapsed().as_secs_f64(), (after_fwd - start_mem) as f64, (after_bwd - start_mem) as f64))
}

/// Memory: one method alone in the process (its weights, state, and the peak of a step).
fn memory(s: &Shape, method: &MethodConfig) -> candle_core::Result<Measured> {
    let base = reset_peak();
    let mut r = setup(s, method)?;
    step(&mut r, s, 0)?; // warm
    reset_peak();
    let (_, acts, grads) = step(&mut r, s, 1)?;
    let peak_b = peak() as f64 - base as f64;
    Ok(Measured {
        step_s: 0.0,
        tokens_per_s: 0.0,
        weights: r.weights,
        state: r.state,
        activations: acts,
        grads,
        peak: peak_b,
        flops: flops(s, method, r.adapter),
        pred: predict(
            &s.cfg,
            method,
            s.batch,
            s.seq,
            r.trainable,
            r.adapter,
            r.params.iter().map(|(_, v)| v.elem_count()).max().unwrap_or(0),
        ),
        trainable: r.trainable,
    })
}

fn flops(s: &Shape, method: &MethodConfig, adapter: usize) -> f64 {
    let n = (s.batch * s.seq) as f64;
    let (d, hd, nh) = (s.cfg.hidden_size as f64, s.cfg.head_dim() as f64, s.cfg.num_attention_heads as f64);
    let matmul_params = (s.cfg.n_params()
        - s.cfg.vocab_size * s.cfg.hidden_size
        - (2 * s.cfg.num_hidden_layers + 1) * s.cfg.hidden_size) as f64
        + (s.cfg.vocab_size as f64 * d);
    let attn = 2.0 * 2.0 * s.batch as f64 * nh * (s.seq * s.seq) as f64 * hd * s.cfg.num_hidden_layers as f64; // QKᵀ and PV forward
                                                                                                               // forward 2·N·n; backward: dX always (2·N·n), dW only for trainable weights (2·N·n for full)
    match method.kind {
        MethodKind::Full => 6.0 * matmul_params * n + 3.0 * attn,
        MethodKind::Lora => 4.0 * matmul_params * n + 3.0 * attn + 6.0 * adapter as f64 * n,
    }
}

/// Time: both methods in memory, steps alternating full/LoRA so drift hits both alike.
fn timing(s: &Shape, methods: &[MethodConfig], steps: usize) -> candle_core::Result<Vec<f64>> {
    let mut runners = methods.iter().map(|m| setup(s, m)).collect::<candle_core::Result<Vec<_>>>()?;
    let mut times = vec![vec![]; runners.len()];
    for i in 0..steps + 1 {
        for (r, t) in runners.iter_mut().zip(times.iter_mut()) {
            let (dt, _, _) = step(r, s, i)?;
            if i > 0 {
                t.push(dt);
            }
        }
    }
    Ok(times
        .into_iter()
        .map(|mut t| {
            t.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
            t[t.len() / 2]
        })
        .collect())
}

const STEPS: usize = 6;

fn matmul_gflops() -> candle_core::Result<f64> {
    let a = Tensor::randn(0f32, 1.0, (2048, 2048), &Device::Cpu)?;
    let b = Tensor::randn(0f32, 1.0, (2048, 2048), &Device::Cpu)?;
    let _ = a.matmul(&b)?;
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t0 = Instant::now();
        let _c = a.matmul(&b)?;
        best = best.min(t0.elapsed().as_secs_f64());
    }
    Ok(2.0 * 2048f64.powi(3) / best / 1e9)
}

/// Gradient checkpointing against plain backprop, one method at a time in the process: the
/// peak of a step (measured, above the weights and optimizer state) and the median step time.
fn checkpointing(s: &Shape, method: &MethodConfig) -> candle_core::Result<[(f64, f64); 2]> {
    let mut out = [(0.0, 0.0); 2];
    for (k, ckpt) in [false, true].into_iter().enumerate() {
        let mut r = setup(s, method)?;
        let mut times = vec![];
        let mut peak_b = 0.0f64;
        for i in 0..=STEPS {
            let (ids, targets, mask) = batch(&s.cfg, s.batch, s.seq, i as u64);
            let base = reset_peak();
            let t0 = Instant::now();
            let (_, g) = r.model.loss_and_grads(
                &ids,
                &targets,
                &mask,
                (s.batch * s.seq) as f64,
                &mut ForwardCtx { train: true, rng: &mut r.rng },
                &r.params,
                ckpt,
            )?;
            let mut gs: Vec<Tensor> = g.into_iter().map(|x| x.expect("grad")).collect();
            clip_grad_norm(&mut gs, 1.0)?;
            r.opt.step(&r.params, &gs, 1e-4, i + 1)?;
            if i > 0 {
                times.push(t0.elapsed().as_secs_f64());
                peak_b = peak_b.max(peak() as f64 - base as f64);
            }
        }
        times.sort_by(f64::total_cmp);
        out[k] = (peak_b, times[times.len() / 2]);
    }
    Ok(out)
}

fn main() -> candle_core::Result<()> {
    // as the addon does: mimalloc keeps freed pages (purge_delay, option 15 in v3, = -1)
    // instead of returning them to the OS and faulting fresh zeroed ones in every step
    alloc::keep_freed_pages();
    let shapes = [
        Shape {
            label: "activation-dominated (d=512, 8 layers, seq 256, micro-batch 8)",
            cfg: llama(4096, 512, 1024, 8, 8, 2),
            batch: 8,
            seq: 256,
        },
        Shape {
            label: "parameter-dominated (d=768, 12 layers, seq 128, micro-batch 1)",
            cfg: llama(32000, 768, 1792, 12, 12, 12),
            batch: 1,
            seq: 128,
        },
    ];
    let only = std::env::args().nth(1);
    if let Some(m) = std::env::args().nth(2) {
        // profiling aid: `bench_train 1 lora` runs only that method's steps
        let s = &shapes[only.as_deref().unwrap_or("1").parse::<usize>().unwrap_or(1) - 1];
        let method = match m.as_str() {
            "lora" => lora16(),
            "lora-nodrop" => MethodConfig { dropout: 0.0, ..lora16() },
            _ => MethodConfig { kind: MethodKind::Full, ..Default::default() },
        };
        let t = timing(s, &[method], STEPS)?;
        println!("{m}: {:.3} s/step", t[0]);
        return Ok(());
    }
    let mm = matmul_gflops()?;
    println!("plain matmul 2048×2048×2048 f32 (candle, this machine, now): {mm:.1} GFLOP/s\n");
    for (i, s) in shapes.iter().enumerate() {
        if only.as_deref().is_some_and(|o| o != (i + 1).to_string()) {
            continue;
        }
        let methods = [
            MethodConfig { kind: MethodKind::Full, ..Default::default() },
            lora16(),
            MethodConfig { dropout: 0.0, ..lora16() },
        ];
        let mut m: Vec<Measured> = methods.iter().map(|x| memory(s, x)).collect::<candle_core::Result<_>>()?;
        let t = timing(s, &methods, STEPS)?;
        let n = (s.batch * s.seq) as f64;
        for (mi, ti) in m.iter_mut().zip(&t) {
            (mi.step_s, mi.tokens_per_s) = (*ti, n / ti);
        }
        println!("## {} — {:.1}M parameters", s.label, s.cfg.n_params() as f64 / 1e6);
        println!("{:<26}{:>18}{:>18}{:>18}", "", "full FT", "LoRA r=16", "LoRA, no dropout");
        let row = |k: &str, f: &dyn Fn(&Measured) -> String| {
            println!("{k:<26}{:>18}{:>18}{:>18}", f(&m[0]), f(&m[1]), f(&m[2]))
        };
        row("trainable parameters", &|x| format!("{}", x.trainable));
        row(&format!("step time (s, median of {STEPS})"), &|x| format!("{:.3}", x.step_s));
        row("tokens/s", &|x| format!("{:.0}", x.tokens_per_s));
        row("GFLOP/s achieved", &|x| format!("{:.1}", x.flops / x.step_s / 1e9));
        row("  vs plain matmul", &|x| format!("{:.0} %", 100.0 * x.flops / x.step_s / 1e9 / mm));
        row("step time vs full FT", &|x| format!("{:.2}×", x.step_s / m[0].step_s));
        println!("memory (MiB)              measured / model");
        row("weights", &|x| format!("{} / {}", mib(x.weights), mib(x.pred.weights)));
        row("optimizer state (LionW)", &|x| format!("{} / {}", mib(x.state), mib(x.pred.state)));
        row("activations (after fwd)", &|x| format!("{} / {}", mib(x.activations), mib(x.pred.activations)));
        row("gradients (after bwd)", &|x| format!("{} / {}", mib(x.grads), mib(x.pred.grads)));
        let total = |x: &Measured| x.pred.weights + x.pred.state + x.pred.activations + x.pred.grads + x.pred.step_work;
        row("clipping temporary", &|x| format!("- / {}", mib(x.pred.step_work)));
        row("peak", &|x| format!("{} / {}", mib(x.peak), mib(total(x))));
        row("  peak vs model", &|x| format!("{:+.0} %", 100.0 * (x.peak / total(x) - 1.0)));
        row("peak vs full FT", &|x| format!("{:.2}×", x.peak / m[0].peak));
        println!();
        // train.gradient_checkpointing, measured side by side in this run
        let c: Vec<[(f64, f64); 2]> =
            methods[..2].iter().map(|x| checkpointing(s, x)).collect::<candle_core::Result<_>>()?;
        println!("gradient checkpointing    {:>18}{:>18}", "full FT", "LoRA r=16");
        // (peak bytes, step seconds) with checkpointing off and on
        type OffOn = [(f64, f64); 2];
        let row2 = |k: &str, f: &dyn Fn(&OffOn) -> String| println!("{k:<26}{:>18}{:>18}", f(&c[0]), f(&c[1]));
        row2("step peak (MiB) off / on", &|x| format!("{} / {}", mib(x[0].0), mib(x[1].0)));
        row2("  on vs off", &|x| format!("{:.2}×", x[1].0 / x[0].0));
        row2("step time (s) off / on", &|x| format!("{:.3} / {:.3}", x[0].1, x[1].1));
        row2("  on vs off", &|x| format!("{:.2}×", x[1].1 / x[0].1));
        println!();
    }
    Ok(())
}
