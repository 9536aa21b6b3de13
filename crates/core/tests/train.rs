//! The training loop end to end on the bundled tiny data: run-directory contents,
//! exact resume, branching with a new schedule, cancel, non-finite loss, bad configs,
//! and the data preparation (CPT packing, IFT loss masks).
#![allow(clippy::unwrap_used)] // test code: a panic is how a check fails
mod common;
use common::repo;
use loralab_core::config::{parse_config, RunConfig};
use loralab_core::train::{run, Event, RunSummary};
use loralab_core::Error;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

fn tmp(name: &str) -> String {
    let d = std::env::temp_dir().join(format!("loralab-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d.to_string_lossy().into_owned()
}

fn cfg(out: &str, extra: serde_json::Value) -> RunConfig {
    let tiny = repo().join("datasets/tiny");
    let mut v = serde_json::json!({
        "name": "t", "out_dir": out, "seed": 5,
        "model": {"config": tiny.join("config.json"), "tokenizer": tiny.join("tokenizer.json")},
        "data": {"train": tiny.join("code.jsonl"), "text_field": "content", "seq_len": 32, "cache_dir": format!("{out}/cache")},
        "optim": {"name": "adamw", "lr": 1e-3},
        "train": {"steps": 6, "micro_batch": 2, "grad_accum": 2, "attention_dropout": 0.1}
    });
    merge(&mut v, extra);
    parse_config(&v.to_string()).unwrap()
}

fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

fn losses(run_dir: &str) -> Vec<(u64, f64)> {
    std::fs::read_to_string(Path::new(run_dir).join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())
        })
        .collect()
}

fn go(c: RunConfig) -> RunSummary {
    run(c, &mut |_: &Event| {}, &AtomicBool::new(false)).unwrap()
}

#[test]
fn run_directory_contract_full_and_lora() {
    let out = tmp("contract");
    let full = go(cfg(&out, serde_json::json!({"run_id": "full", "train": {"checkpoint_every": 4}})));
    let d = Path::new(&full.run_dir);
    for f in [
        "config.json",
        "run.json",
        "metrics.jsonl",
        "model/model.safetensors",
        "model/config.json",
        "model/tokenizer.json",
        "checkpoints/step-000004/optimizer.safetensors",
        "checkpoints/step-000006/trainer_state.json",
    ] {
        assert!(d.join(f).is_file(), "missing {f}");
    }
    let st = candle_core::safetensors::load(d.join("model/model.safetensors"), &candle_core::Device::Cpu).unwrap();
    assert!(st.values().all(|t| t.dtype() == candle_core::DType::F32), "trained weights are saved in f32");
    assert!(st.contains_key("model.layers.0.self_attn.q_proj.weight") && st.contains_key("model.embed_tokens.weight"));
    let run_json: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("run.json")).unwrap()).unwrap();
    assert_eq!(run_json["status"], "completed");
    assert_eq!(losses(&full.run_dir).len(), 6);

    let lora = go(cfg(
        &out,
        serde_json::json!({"run_id": "lora", "method": {"kind": "lora", "rank": 4, "targets": ["q_proj", "v_proj"]}}),
    ));
    let d = Path::new(&lora.run_dir);
    let ac: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("adapter/adapter_config.json")).unwrap()).unwrap();
    assert_eq!(ac["peft_type"], "LORA");
    assert_eq!(ac["r"], 4);
    assert_eq!(ac["lora_alpha"], 8.0);
    let st =
        candle_core::safetensors::load(d.join("adapter/adapter_model.safetensors"), &candle_core::Device::Cpu).unwrap();
    assert!(st.contains_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"));
    assert!(st.contains_key("base_model.model.model.layers.3.self_attn.v_proj.lora_B.weight"));
    assert_eq!(st.len(), 4 * 2 * 2);
    assert!(d.join("base/model.safetensors").is_file(), "a random base is kept for the adapter");
    assert!(lora.trainable_params < full.trainable_params / 10);
}

#[test]
fn cancel_then_resume_equals_uninterrupted() {
    for method in ["full", "lora"] {
        let out = tmp(&format!("resume-{method}"));
        let m = serde_json::json!({"method": {"kind": method, "rank": 4, "dropout": 0.1}, "train": {"checkpoint_every": 2}});
        let mut whole_cfg = cfg(&out, m.clone());
        whole_cfg.run_id = "whole".into();
        let whole = go(whole_cfg);

        // the same run, stopped after step 3 (mid-way between checkpoints) ...
        let mut part = cfg(&out, m.clone());
        part.run_id = "part".into();
        let stop = AtomicBool::new(false);
        let s = run(
            part.clone(),
            &mut |e: &Event| {
                if let Event::Progress(p) = e {
                    if p.step == 3 {
                        stop.store(true, Ordering::Relaxed)
                    }
                }
            },
            &stop,
        )
        .unwrap();
        assert_eq!(s.status, loralab_core::train::Outcome::Cancelled);
        assert_eq!(s.steps, 3);
        // ... resumed from its last *periodic* checkpoint (step 2), as after a SIGKILL
        part.train.resume_from = format!("{out}/part/checkpoints/step-000002");
        let resumed = go(part);
        assert_eq!(resumed.status, loralab_core::train::Outcome::Completed);
        let (a, b) = (losses(&whole.run_dir), losses(&resumed.run_dir));
        assert_eq!(a.len(), b.len(), "{method}: each step once in metrics.jsonl: {b:?}");
        for ((sa, la), (sb, lb)) in a.iter().zip(&b) {
            assert_eq!(sa, sb);
            assert!((la - lb).abs() <= 1e-6, "{method} step {sa}: {la} vs resumed {lb}");
        }
    }
}

#[test]
fn resume_from_a_checkpoint_with_a_new_schedule_branches() {
    let out = tmp("branch");
    let long = go(cfg(
        &out,
        serde_json::json!({"run_id": "long", "schedule": {"kind": "inverse_sqrt"}, "train": {"steps": 10, "checkpoint_at_tokens": [512]}}),
    ));
    // 512 tokens = 4 steps of 4 sequences × 32 tokens: the CPT budget branch point
    let ckpt = format!("{}/checkpoints/step-000004", long.run_dir);
    assert!(Path::new(&ckpt).is_dir());
    let mut lrs = vec![];
    let branch = cfg(
        &out,
        serde_json::json!({"run_id": "branch", "schedule": {"kind": "inverse_sqrt", "cooldown_frac": 0.2}, "train": {"steps": 5, "resume_from": ckpt}}),
    );
    let s = run(
        branch,
        &mut |e: &Event| {
            if let Event::Progress(p) = e {
                lrs.push((p.step, p.lr))
            }
        },
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(s.steps, 5);
    assert_eq!(lrs.first().unwrap().0, 5, "continues after the checkpoint's step");
    assert_eq!(lrs.len(), 1);
}

#[test]
fn non_finite_loss_stops_and_keeps_the_last_good_checkpoint() {
    let out = tmp("nan");
    let c = cfg(
        &out,
        serde_json::json!({"run_id": "nan", "optim": {"name": "adamw", "lr": 1e30, "grad_clip": 0.0}, "schedule": {"kind": "constant", "warmup_frac": 0.0}, "train": {"steps": 50, "checkpoint_every": 1}}),
    );
    let err = run(c, &mut |_: &Event| {}, &AtomicBool::new(false)).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::NonFinite { .. }), "{msg}");
    assert!(msg.contains("not finite") && msg.contains("checkpoints/step-"), "{msg}");
    let run_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{out}/nan/run.json")).unwrap()).unwrap();
    assert_eq!(run_json["status"], "failed");
    let last = msg.split("checkpoint is ").nth(1).unwrap().split('.').next().unwrap().to_string();
    assert!(Path::new(&last).join("trainer_state.json").is_file(), "{last}");
}

#[test]
fn bad_configs_fail_before_any_work_naming_the_field() {
    let out = tmp("bad");
    let cases: Vec<(serde_json::Value, &str, &str)> = vec![
        (serde_json::json!({"method": {"rnk": 4}}), "method.rnk", "unknown field `rnk`"),
        (serde_json::json!({"train": {"steps": "ten"}}), "train.steps", "invalid type"),
        (serde_json::json!({"method": {"kind": "lora", "rank": 0}}), "method.rank", "must be ≥ 1"),
        (serde_json::json!({"method": {"kind": "lora", "rank": -1}}), "method.rank", "invalid value"),
        (
            serde_json::json!({"method": {"kind": "lora", "targets": ["q_proj", "lm_head"]}}),
            "method.targets",
            "unknown target module `lm_head`",
        ),
        (serde_json::json!({"method": {"kind": "lora", "targets": "everything"}}), "method.targets", "unknown target"),
        (serde_json::json!({"method": {"kind": "dora"}}), "method.kind", "unknown variant"),
        (serde_json::json!({"data": {"train": "/nonexistent/data.jsonl"}}), "data.train", "file not found"),
        (serde_json::json!({"optim": {"lr": -1.0}}), "optim.lr", "must be > 0"),
        (serde_json::json!({"train": {"device": "gpu"}}), "train.device", "unknown device `gpu`"),
    ];
    for (extra, field, text) in cases {
        let tiny = repo().join("datasets/tiny");
        let mut v = serde_json::json!({"name": "t", "out_dir": out, "model": {"config": tiny.join("config.json"), "tokenizer": tiny.join("tokenizer.json")}, "data": {"train": tiny.join("code.jsonl")}});
        merge(&mut v, extra.clone());
        let err = parse_config(&v.to_string()).and_then(|c| c.resolve()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Config { .. }), "{extra}: {msg}");
        assert!(msg.starts_with(&format!("config {field}:")) && msg.contains(text), "{extra}: got `{msg}`");
    }
    assert!(!Path::new(&out).exists(), "nothing is written for a bad config");
}

#[test]
fn ift_masks_prompt_tokens_and_cpt_packs_documents() {
    let out = tmp("data");
    let tiny = repo().join("datasets/tiny");
    let tok = loralab_core::data::load_tokenizer(&tiny.join("tokenizer.json")).unwrap();
    let ift =
        cfg(&out, serde_json::json!({"data": {"format": "ift", "train": tiny.join("code_ift.jsonl"), "seq_len": 96}}));
    let s = loralab_core::data::prepare(&ift.data, &tok, &tiny.join("tokenizer.json"), 1, None).unwrap();
    let (ids, mask) = s.row(0);
    let first: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(tiny.join("code_ift.jsonl")).unwrap().lines().next().unwrap())
            .unwrap();
    let prompt = ift.data.template.replace("{prompt}", first["prompt"].as_str().unwrap());
    let n_prompt = tok.encode(prompt.as_str(), true).unwrap().get_ids().len();
    assert!(mask[..n_prompt].iter().all(|&m| m == 0), "no loss on prompt tokens");
    let resp: Vec<u32> = ids.iter().zip(mask).filter(|(_, &m)| m == 1).map(|(&i, _)| i).collect();
    let expect = format!("{}</s>", first["response"].as_str().unwrap());
    assert_eq!(tok.decode(&resp, false).unwrap(), expect, "loss exactly on the response and its EOS");

    let cpt = cfg(&out, serde_json::json!({"data": {"seq_len": 64}}));
    let s = loralab_core::data::prepare(&cpt.data, &tok, &tiny.join("tokenizer.json"), 1, None).unwrap();
    let (ids, mask) = s.row(0);
    assert_eq!(ids.len(), 64);
    assert!(mask.iter().all(|&m| m == 1));
    assert!(ids.contains(&1), "documents are joined by EOS (id 1) within a block");
    // prepared once: a second prepare reuses the cached shards
    let again = loralab_core::data::prepare(&cpt.data, &tok, &tiny.join("tokenizer.json"), 1, None).unwrap();
    assert_eq!(again.dir, s.dir);
}

#[test]
fn gradient_accumulation_equals_one_big_batch() {
    let out = tmp("accum");
    let big = go(cfg(
        &out,
        serde_json::json!({"run_id": "big", "model": {"dtype": "f64"}, "train": {"steps": 3, "micro_batch": 4, "grad_accum": 1, "attention_dropout": 0.0}}),
    ));
    let acc = go(cfg(
        &out,
        serde_json::json!({"run_id": "acc", "model": {"dtype": "f64"}, "train": {"steps": 3, "micro_batch": 1, "grad_accum": 4, "attention_dropout": 0.0}}),
    ));
    for ((s, a), (_, b)) in losses(&big.run_dir).iter().zip(losses(&acc.run_dir).iter()) {
        assert!((a - b).abs() < 1e-9, "step {s}: one batch of 4 {a} vs 4 micro-batches of 1 {b}");
    }
}

#[test]
fn token_budgets_are_exact_and_the_prepare_report_is_recorded() {
    let out = tmp("budget");
    // 4 sequences × 32 tokens = 128 tokens a step: 1000 tokens round up to 8 steps
    let s = go(cfg(
        &out,
        serde_json::json!({"run_id": "tok", "train": {"steps": 0, "tokens": 1000, "micro_batch": 2, "grad_accum": 2}}),
    ));
    assert_eq!(s.total_steps, 8);
    assert_eq!(s.tokens, 1024);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{}/data.json", s.run_dir)).unwrap()).unwrap();
    let rows = report["rows"].as_u64().unwrap() as f64;
    assert!((s.epochs - 32.0 / rows).abs() < 1e-12, "epochs = samples / rows");
    assert_eq!(report["documents"], 1300);
    let (tokens, dropped) = (report["tokens"].as_u64().unwrap(), report["dropped_tokens"].as_u64().unwrap());
    assert_eq!(tokens - dropped, rows as u64 * 32, "CPT: every token is in a row but the tail");
    assert!(dropped < 32);

    // IFT: a window too small for some examples truncates them; too small for a prompt drops it
    let tiny = repo().join("datasets/tiny");
    let ift = cfg(
        &out,
        serde_json::json!({"run_id": "ift", "data": {"format": "ift", "train": tiny.join("code_ift.jsonl"), "seq_len": 30}, "train": {"steps": 1}}),
    );
    let s = go(ift);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{}/data.json", s.run_dir)).unwrap()).unwrap();
    assert_eq!(report["documents"], 600);
    assert!(report["truncated"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["rows"].as_u64().unwrap() + report["dropped"].as_u64().unwrap(), 600);
    let e = cfg(&out, serde_json::json!({"train": {"steps": 3, "tokens": 100}})).resolve().unwrap_err().to_string();
    assert!(e.starts_with("config train.tokens:"), "{e}");
}

#[test]
fn bad_dataset_rows_are_named_by_file_and_line() {
    let out = tmp("rows");
    std::fs::create_dir_all(&out).unwrap();
    let tok = loralab_core::data::load_tokenizer(&repo().join("datasets/tiny/tokenizer.json")).unwrap();
    let tok_path = repo().join("datasets/tiny/tokenizer.json");
    let cases = [
        ("malformed.jsonl", "{\"text\": \"fine\"}\n{\"text\": oops}\n", "row 2", "not valid JSON"),
        ("missing.jsonl", "{\"text\": \"fine\"}\n\n{\"body\": \"x\"}\n", "row 3", "no field `text`"),
        ("wrongtype.jsonl", "{\"text\": 12}\n", "row 1", "is a number not a string"),
        ("empty.jsonl", "\n\n", "", "no records"),
    ];
    for (file, body, row, msg) in cases {
        let p = format!("{out}/{file}");
        std::fs::write(&p, body).unwrap();
        let mut c = cfg(&out, serde_json::json!({"data": {"train": p}}));
        c.data.text_field = "text".into();
        let e = loralab_core::data::prepare(&c.data, &tok, &tok_path, 1, None).err().expect("must fail").to_string();
        assert!(e.contains(file) && e.contains(row) && e.contains(msg), "{file}: {e}");
        assert!(!std::path::Path::new(&c.data.cache_dir).join("x").exists());
    }
    // nothing half-written is left looking valid in the shard cache
    let cache = std::path::Path::new(&out).join("cache");
    if cache.is_dir() {
        for e in std::fs::read_dir(&cache).unwrap() {
            assert!(!e.unwrap().path().join("meta.json").exists(), "a failed prepare left shards behind");
        }
    }
}
