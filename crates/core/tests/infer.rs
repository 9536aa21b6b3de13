//! Inference: log-likelihoods against a plain full forward pass, batched against one by
//! one, KV-cache generation against re-running the whole sequence, stop strings, length
//! limits, seeded sampling, and a LoRA adapter merged or not.
#![allow(clippy::unwrap_used)] // test code: a panic is how a check fails
mod common;
use candle_core::{DType, Device, Tensor, D};
use common::*;
use loralab_core::infer::{Engine, GenerateOptions, LoglikRequest};
use loralab_core::linear::ForwardCtx;
use loralab_core::model::{Llama, LlamaConfig};
use loralab_core::rng::Rng;

/// The bundled tiny model's architecture with random weights, in f64, and its tokenizer.
fn tiny(dtype: DType) -> Engine {
    let dir = repo().join("datasets/tiny");
    let cfg = LlamaConfig::from_file(&dir.join("config.json")).unwrap();
    let model = Llama::random(cfg, dtype, &mut Rng::new(3)).unwrap();
    Engine::new(model, loralab_core::data::load_tokenizer(&dir.join("tokenizer.json")).unwrap()).unwrap()
}

fn pairs() -> Vec<LoglikRequest> {
    [
        ("The red owl plays in the", " river"),
        ("The red owl plays in the ", "river at dawn."),
        ("def add(a, b):\n", "    return a + b\n"),
        ("", "A wolf lives near the forest."),
        ("Question: what is 2 + 3?\nAnswer:", " 5"),
        ("x", " = 1"),
        ("The golden fox plays in the river before noon. Before noon, the dog runs by the", " valley."),
    ]
    .iter()
    .map(|(c, x)| LoglikRequest { context: c.to_string(), continuation: x.to_string() })
    .collect()
}

/// Σ log p(continuation) from the training forward pass over the whole sequence.
fn plain_loglik(e: &Engine, r: &LoglikRequest) -> (f64, usize, bool) {
    let enc = |s: &str| e.tok.encode(s, false).unwrap().get_ids().to_vec();
    let ctx = r.context.trim_end();
    let cont = format!("{}{}", &r.context[ctx.len()..], r.continuation);
    let (c, all) = if ctx.is_empty() {
        let mut all = vec![e.pad_id];
        all.extend(enc(&cont));
        (1, all)
    } else {
        (enc(ctx).len(), enc(&format!("{ctx}{cont}")))
    };
    let ids = Tensor::new(&all[..all.len() - 1], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let logits = e
        .model
        .forward(&ids, &mut ForwardCtx { train: false, rng: &mut Rng::new(0) })
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let lsm = logits.broadcast_sub(&logits.max_keepdim(D::Minus1).unwrap()).unwrap();
    let lsm = lsm
        .broadcast_sub(&lsm.exp().unwrap().sum_keepdim(D::Minus1).unwrap().log().unwrap())
        .unwrap()
        .to_vec2::<f64>()
        .unwrap();
    let (mut lp, mut greedy) = (0.0, true);
    for p in c - 1..all.len() - 1 {
        let row = &lsm[p];
        lp += row[all[p + 1] as usize];
        let arg = row.iter().enumerate().fold(0, |b, (i, v)| if *v > row[b] { i } else { b });
        greedy &= arg as u32 == all[p + 1];
    }
    (lp, all.len() - c, greedy)
}

#[test]
fn loglikelihood_equals_the_sum_from_a_plain_forward_pass_and_batching_changes_nothing() {
    let e = tiny(DType::F64);
    let reqs = pairs();
    let one_by_one: Vec<_> =
        reqs.iter().map(|r| e.loglikelihood(std::slice::from_ref(r), 1).unwrap().remove(0)).collect();
    let batched = e.loglikelihood(&reqs, 4).unwrap();
    for ((r, a), b) in reqs.iter().zip(&one_by_one).zip(&batched) {
        let (lp, n, greedy) = plain_loglik(&e, r);
        assert!((a.logprob - lp).abs() < 1e-9, "{r:?}: {} vs plain {lp}", a.logprob);
        assert_eq!((a.tokens, a.greedy), (n, greedy), "{r:?}");
        assert!(
            (a.logprob - b.logprob).abs() < 1e-9 && a.tokens == b.tokens && a.greedy == b.greedy,
            "batched {b:?} vs alone {a:?}"
        );
        assert!(a.logprob < 0.0 && a.tokens > 0);
    }
    // the context's trailing space moves to the continuation: same tokens, same score
    assert!(
        (one_by_one[1].logprob
            - e.loglikelihood(
                &[LoglikRequest { context: "The red owl plays in the".into(), continuation: " river at dawn.".into() }],
                1
            )
            .unwrap()[0]
                .logprob)
            .abs()
            < 1e-12
    );
}

#[test]
fn choices_that_share_a_context_share_its_forward_pass_and_score_as_alone() {
    // the cloze's shape: questions of several choices after one context, the groups larger and
    // smaller than a batch, next to lone requests and choices after an empty context (one-token
    // prefix: not shared); every score must equal the plain forward pass of its own sequence
    let e = tiny(DType::F64);
    let mut reqs = vec![];
    for (ctx, choices) in [
        ("The red owl plays in the", vec![" river", " forest at dawn.", " valley", " sky above the hills"]),
        ("def add(a, b):\n", vec!["    return a + b\n", "    pass\n"]),
        ("Question: what is 2 + 3?\nAnswer:", vec![" 5", " 6", " 23", " five", " 2 + 3 = 5", " 7"]),
        ("", vec!["A wolf lives near the forest.", "The dog runs."]),
    ] {
        for c in choices {
            reqs.push(LoglikRequest { context: ctx.into(), continuation: c.into() });
        }
    }
    reqs.insert(3, LoglikRequest { context: "x".into(), continuation: " = 1".into() });
    for batch in [1, 2, 4, 5, 32] {
        let got = e.loglikelihood(&reqs, batch).unwrap();
        for (r, g) in reqs.iter().zip(&got) {
            let (lp, n, greedy) = plain_loglik(&e, r);
            assert!((g.logprob - lp).abs() < 1e-9, "batch {batch}, {r:?}: {} vs plain {lp}", g.logprob);
            assert_eq!((g.tokens, g.greedy), (n, greedy), "batch {batch}, {r:?}");
        }
    }
}

#[test]
fn smollm2_loglikelihood_matches_its_plain_forward_pass_and_prefers_the_true_fact() {
    let e = Engine::load(&loralab_core::infer::LoadRequest {
        model: smollm2().display().to_string(),
        ..Default::default()
    })
    .unwrap();
    let reqs: Vec<LoglikRequest> = [" Paris.", " Berlin.", " a banana."]
        .iter()
        .map(|c| LoglikRequest { context: "The capital of France is".into(), continuation: c.to_string() })
        .collect();
    let got = e.loglikelihood(&reqs, 3).unwrap();
    for (r, g) in reqs.iter().zip(&got) {
        let (lp, n, greedy) = plain_loglik(&e, r);
        assert!((g.logprob - lp).abs() < 1e-3, "{r:?}: {} vs {lp}", g.logprob);
        assert_eq!((g.tokens, g.greedy), (n, greedy));
    }
    assert!(got[0].logprob > got[1].logprob && got[1].logprob > got[2].logprob, "{got:?}");
    assert!(got[0].greedy, "Paris is the greedy continuation: {got:?}");
}

#[test]
fn kv_cache_generation_equals_full_reforward_token_for_token_on_smollm2() {
    let e = Engine::load(&loralab_core::infer::LoadRequest {
        model: smollm2().display().to_string(),
        ..Default::default()
    })
    .unwrap();
    let prompts: Vec<String> = [
        "The capital of France is",
        "def fibonacci(n):\n",
        "Once upon a time, in a small village by the sea, there lived",
        "1, 2, 3, 4,",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let o = GenerateOptions { max_new_tokens: 24, batch_size: 4, ..Default::default() };
    let cached = e.generate(&prompts, &o).unwrap(); // one left-padded batch
    let reforward = e.generate(&prompts, &GenerateOptions { cache: false, ..o.clone() }).unwrap();
    let alone: Vec<_> = prompts.iter().map(|p| e.generate(std::slice::from_ref(p), &o).unwrap().remove(0)).collect();
    assert_eq!(cached, reforward);
    assert_eq!(cached, alone);
    assert!(cached[0].text.contains("Paris"), "{:?}", cached[0].text);
    assert!(cached.iter().all(|g| g.tokens > 0 && g.prompt_tokens > 0));
}

#[test]
fn stop_strings_cut_the_text_and_length_limits_count_the_prompt() {
    let e = tiny(DType::F32);
    let prompt = vec!["The red owl".to_string()];
    let free = e.generate(&prompt, &GenerateOptions { max_new_tokens: 40, ..Default::default() }).unwrap().remove(0);
    assert_eq!(free.finish, "length");
    assert_eq!(free.tokens, 40);
    // stop at a piece of what it generates anyway: the text is cut just before it
    let piece: String = free.text.chars().skip(free.text.chars().count() / 2).take(3).collect();
    let stopped = e
        .generate(
            &prompt,
            &GenerateOptions {
                max_new_tokens: 40,
                stop: vec![piece.clone(), "\u{1F600}never".into()],
                ..Default::default()
            },
        )
        .unwrap()
        .remove(0);
    assert_eq!(stopped.finish, "stop");
    assert_eq!(stopped.text, free.text[..free.text.find(&piece).unwrap()]);
    assert!(stopped.tokens < 40);
    // max_length counts prompt and generation (bigcode's max_length_generation)
    let limited = e
        .generate(
            &prompt,
            &GenerateOptions { max_new_tokens: 40, max_length: free.prompt_tokens + 5, ..Default::default() },
        )
        .unwrap()
        .remove(0);
    assert_eq!((limited.tokens, limited.finish.as_str()), (5, "length"));
    let none = e
        .generate(&prompt, &GenerateOptions { max_length: free.prompt_tokens, ..Default::default() })
        .unwrap()
        .remove(0);
    assert_eq!((none.tokens, none.text.as_str()), (0, ""));
}

#[test]
fn sampling_is_seeded_per_prompt_whatever_the_batching() {
    let e = tiny(DType::F32);
    let prompts: Vec<String> =
        ["The red owl", "A wolf", "def f(x):", "The golden fox plays"].iter().map(|s| s.to_string()).collect();
    let o = GenerateOptions {
        max_new_tokens: 12,
        temperature: 1.0,
        top_p: 0.95,
        seed: 7,
        batch_size: 4,
        ..Default::default()
    };
    let a = e.generate(&prompts, &o).unwrap();
    let b = e.generate(&prompts, &GenerateOptions { batch_size: 1, ..o.clone() }).unwrap();
    let c = e.generate(&prompts, &GenerateOptions { seed: 8, ..o.clone() }).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c, "another seed must give other samples");
    let greedy = e.generate(&prompts, &GenerateOptions { temperature: 0.0, ..o.clone() }).unwrap();
    assert_ne!(a, greedy, "temperature 1 on a random model must not be greedy");
    assert!(e.generate(&prompts, &GenerateOptions { top_p: 0.0, ..o }).is_err());
}

#[test]
fn a_lora_adapter_scores_the_same_merged_or_not() {
    let dir = std::env::temp_dir().join(format!("loralab-infer-lora-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let base = dir.join("base");
    let tiny_dir = repo().join("datasets/tiny");
    let cfg = LlamaConfig::from_file(&tiny_dir.join("config.json")).unwrap();
    let mut model = Llama::random(cfg, DType::F32, &mut Rng::new(3)).unwrap();
    let full =
        loralab_core::config::MethodConfig { kind: loralab_core::config::MethodKind::Full, ..Default::default() };
    loralab_core::checkpoint::save(
        &base,
        &model,
        &full,
        &tiny_dir.join("config.json"),
        &tiny_dir.join("tokenizer.json"),
        "",
        None,
        None,
    )
    .unwrap();
    // an adapter with non-zero B, so it changes the model
    let lora = loralab_core::config::MethodConfig {
        kind: loralab_core::config::MethodKind::Lora,
        rank: 4,
        ..Default::default()
    };
    model.apply_method(&lora, &mut Rng::new(5)).unwrap();
    for lin in model.linears_mut() {
        if let Some(l) = &lin.lora {
            l.b.set(&(randn(l.b.dims(), 0.05, 9).to_dtype(DType::F32).unwrap())).unwrap();
        }
    }
    let adapter = dir.join("adapter");
    loralab_core::checkpoint::save(
        &adapter,
        &model,
        &lora,
        &tiny_dir.join("config.json"),
        &tiny_dir.join("tokenizer.json"),
        "base",
        None,
        None,
    )
    .unwrap();
    let load = |a: &str, merged: bool| {
        Engine::load(&loralab_core::infer::LoadRequest {
            model: base.display().to_string(),
            adapter: a.into(),
            merged,
            ..Default::default()
        })
        .unwrap()
    };
    let reqs = pairs();
    let plain = load("", false).loglikelihood(&reqs, 4).unwrap();
    let unmerged = load(&adapter.display().to_string(), false).loglikelihood(&reqs, 4).unwrap();
    let merged = load(&adapter.display().to_string(), true).loglikelihood(&reqs, 4).unwrap();
    for ((p, u), m) in plain.iter().zip(&unmerged).zip(&merged) {
        assert!((u.logprob - m.logprob).abs() < 1e-3, "unmerged {u:?} vs merged {m:?}");
        assert!((u.logprob - p.logprob).abs() > 1e-3, "the adapter must change the score: {u:?} vs base {p:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn generated_text_keeps_the_leading_space_a_sentencepiece_decoder_strips() {
    // a SentencePiece vocabulary (tests/reference/gguf_spm_fixture.py): its decoder drops the
    // first token's leading space, so a continuation must be cut from decode(prompt + gen)
    let tok = loralab_core::data::load_tokenizer(&repo().join("tests/reference/tiny_spm.gguf")).unwrap();
    let mut cfg = LlamaConfig::from_file(&repo().join("datasets/tiny/config.json")).unwrap();
    cfg.vocab_size = tok.get_vocab_size(true);
    let e = Engine::new(Llama::random(cfg, DType::F32, &mut Rng::new(1)).unwrap(), tok).unwrap();
    for (prompt, rest) in [("x =", " 1234"), ("def f():\n", "    return 1")] {
        let whole = e.tok.encode(format!("{prompt}{rest}"), false).unwrap().get_ids().to_vec();
        let p = e.tok.encode(prompt, false).unwrap().get_ids().to_vec();
        assert!(whole.starts_with(&p), "{prompt:?}");
        let gen = &whole[p.len()..];
        let alone = e.tok.decode(gen, true).unwrap();
        assert_ne!(alone, rest, "decoding alone loses the space here, which is the point of the test");
        let prompt_text = e.tok.decode(&p, true).unwrap();
        assert_eq!(e.continuation_text(&p, &prompt_text, gen).unwrap(), rest);
    }
}

#[test]
fn prompts_beyond_the_models_positions_are_truncated_on_request_or_refused() {
    let e = tiny(DType::F32);
    let max = e.model.cfg.max_position_embeddings;
    let long = vec!["The red owl plays in the river. ".repeat(200)];
    assert!(e.count_tokens(&long[0]).unwrap() > max);
    let err = e.generate(&long, &GenerateOptions { max_new_tokens: 8, ..Default::default() }).unwrap_err();
    assert!(err.to_string().contains("max_position_embeddings"), "{err}");
    // lm-eval's generate_until: the context keeps its last max_length − max_gen_toks tokens
    let cut = e
        .generate(&long, &GenerateOptions { max_new_tokens: 8, truncate: true, ..Default::default() })
        .unwrap()
        .remove(0);
    assert_eq!((cut.prompt_tokens, cut.tokens), (max - 8, 8));
    // a prompt that fits leaves only the positions it does not use to generate in
    let words: Vec<&str> = long[0].split_inclusive(' ').collect();
    let mut n = words.len();
    while e.count_tokens(&words[..n].concat()).unwrap() > max - 3 {
        n -= 1;
    }
    let near = e
        .generate(&[words[..n].concat()], &GenerateOptions { max_new_tokens: 40, ..Default::default() })
        .unwrap()
        .remove(0);
    assert!(near.prompt_tokens <= max - 3);
    assert_eq!(near.prompt_tokens + near.tokens, max);
}
