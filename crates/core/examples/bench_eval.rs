//! `bun run bench eval [NEW_TOKENS] [REFORWARD_TOKENS_AT_BATCH_8]`: inference speed on
//! SmolLM2-135M (`bun run fetch smollm2`), measured side by side in one process:
//! - log-likelihood tokens/s (64 context/continuation pairs, batch 8);
//! - generation tokens/s with the KV cache vs by full re-forward, at batch 1 and batch 8;
//! - per-token decode latency at position 256 vs at position 16 (median of 15 steps).
//!
//! Targets (the evaluation issue): cached ≥ 5× re-forward at 256 new tokens; decode latency
//! at 256 ≤ 1.3× that at 16. Re-forwarding 256 tokens for 8 rows takes many minutes on
//! 2 cores, so batch 8 re-forwards fewer tokens (second argument, default 64) and the
//! cached run is timed over the same count for its ratio.
#![allow(clippy::unwrap_used)] // a benchmark: a failed measurement may panic
use candle_core::{Device, Tensor};
use loralab_core::infer::{Engine, GenerateOptions, KvCache, LoadRequest, LoglikRequest};
use std::time::Instant;

fn smollm2() -> std::path::PathBuf {
    let cache = std::env::var("LORALAB_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/loralab"));
    cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let new_tokens = args.first().copied().unwrap_or(256);
    let reforward_b8 = args.get(1).copied().unwrap_or(64);
    let path = smollm2();
    assert!(path.is_file(), "{} missing (hint: bun run fetch smollm2)", path.display());
    let mut e =
        Engine::load(&LoadRequest { model: path.display().to_string(), ..Default::default() }).expect("load SmolLM2");
    e.stop_ids.clear(); // every row generates exactly the asked-for tokens
    println!("SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to f32), {} threads", candle_core::utils::get_num_threads());

    // --- log-likelihood
    let ctx = "The quick brown fox jumps over the lazy dog near the riverbank, while children play in the park and the sun sets slowly behind the hills of the quiet village.";
    let reqs: Vec<LoglikRequest> = (0..64)
        .map(|i| LoglikRequest {
            context: format!("{ctx} Story {i}:"),
            continuation: format!(" The fox number {i} ran home quickly."),
        })
        .collect();
    let _ = e.loglikelihood(&reqs[..8], 8).unwrap(); // warm up
    let t = Instant::now();
    let ll = e.loglikelihood(&reqs, 8).unwrap();
    let secs = t.elapsed().as_secs_f64();
    let toks: usize =
        reqs.iter().map(|r| e.tok.encode(format!("{}{}", r.context, r.continuation), false).unwrap().len()).sum();
    println!(
        "\nlog-likelihood: {} pairs, {toks} tokens in {secs:.2} s = {:.0} tokens/s (continuation tokens scored: {})",
        reqs.len(),
        toks as f64 / secs,
        ll.iter().map(|l| l.tokens).sum::<usize>()
    );

    // --- generation, cached vs re-forward
    let prompt = "Once upon a time, in a small village by the sea,".to_string();
    let gen = |b: usize, n: usize, cache: bool| -> f64 {
        let prompts = vec![prompt.clone(); b];
        let o = GenerateOptions { max_new_tokens: n, batch_size: b, cache, ..Default::default() };
        let t = Instant::now();
        let out = e.generate(&prompts, &o).unwrap();
        let secs = t.elapsed().as_secs_f64();
        assert!(out.iter().all(|g| g.tokens == n), "every row must generate {n} tokens");
        (b * n) as f64 / secs
    };
    let _ = gen(1, 4, true);
    println!("\ngeneration (prompt {} tokens):", e.tok.encode(prompt.as_str(), false).unwrap().len());
    println!("{:>6} {:>11} {:>14} {:>14} {:>8}", "batch", "new tokens", "cached tok/s", "re-fwd tok/s", "ratio");
    for (b, n_ref) in [(1, new_tokens), (8, reforward_b8.min(new_tokens))] {
        let cached = gen(b, n_ref, true);
        let refwd = gen(b, n_ref, false);
        println!("{b:>6} {n_ref:>11} {cached:>14.1} {refwd:>14.2} {:>7.1}×", cached / refwd);
        if n_ref != new_tokens {
            println!("{b:>6} {new_tokens:>11} {:>14.1} {:>14} {:>8}", gen(b, new_tokens, true), "(not run)", "");
        }
    }

    // --- decode latency by position
    let step_ms = |pos: usize| -> f64 {
        let ids: Vec<u32> = (0..pos).map(|i| 100 + (i as u32 * 37) % 1000).collect();
        let mut v = vec![];
        for _ in 0..15 {
            let mut cache = KvCache::new(&e.model, 1, 512).unwrap();
            e.forward_cached(&Tensor::from_vec(ids.clone(), (1, pos), &Device::Cpu).unwrap(), &[0], &mut cache)
                .unwrap();
            let t = Instant::now();
            let h = e
                .forward_cached(&Tensor::from_vec(vec![42u32], (1, 1), &Device::Cpu).unwrap(), &[0], &mut cache)
                .unwrap();
            let _ = h.matmul(&e.model.embed_tokens.tensor().t().unwrap()).unwrap(); // the head, as a real step
            v.push(t.elapsed().as_secs_f64() * 1e3);
        }
        median(v)
    };
    let _ = step_ms(16);
    let (at16, at256) = (step_ms(16), step_ms(256));
    println!("\ndecode step latency (batch 1, cache capacity 512, median of 15): position 16 {at16:.2} ms, position 256 {at256:.2} ms: {:.2}×", at256 / at16);
}
