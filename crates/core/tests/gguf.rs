//! A real pretrained model nobody here trained: SmolLM2-135M-Instruct as a Q4_1 GGUF
//! (`bun run fetch smollm2` puts it in the cache; `bun run test` fetches it first). Its
//! logits must match an independent numpy forward pass over the same file read with the
//! PyPI `gguf` package (tests/reference/gguf_ref.py), to ≤ 1e-3.
#![allow(clippy::unwrap_used)] // test code: a panic is how a check fails
mod common;
use candle_core::{DType, Device, Tensor};
use common::*;
use loralab_core::gguf::{hf_name, load_gguf};
use loralab_core::linear::ForwardCtx;
use loralab_core::rng::Rng;

#[test]
fn smollm2_logits_match_the_numpy_reference() {
    let (model, md) = load_gguf(&smollm2(), DType::F32).unwrap();
    assert_eq!(model.cfg.num_hidden_layers, 30);
    assert_eq!(model.cfg.vocab_size, 49152);
    assert!(model.cfg.tie_word_embeddings && model.lm_head.is_none());
    assert_eq!(md["tokenizer.ggml.model"].to_string().unwrap(), "gpt2");
    let fx = candle_core::safetensors::load(repo().join("tests/reference/gguf_ref.safetensors"), &Device::Cpu).unwrap();
    let ids = fx["ids"].to_dtype(DType::U32).unwrap().unsqueeze(0).unwrap();
    let logits = model.forward(&ids, &mut ForwardCtx { train: false, rng: &mut Rng::new(0) }).unwrap();
    let t = ids.dim(1).unwrap();
    for (row, key) in [(3, "logits.pos3"), (t - 1, "logits.last")] {
        let got = logits.get(row).unwrap();
        let d = max_abs_diff(&got, &fx[key]);
        assert!(d <= 1e-3, "{key}: max abs difference {d:e} from the numpy reference");
        let argmax = |x: &Tensor| x.argmax(0).unwrap().to_scalar::<u32>().unwrap();
        assert_eq!(argmax(&got), argmax(&fx[key]));
    }
}

#[test]
fn gguf_names_map_to_hugging_face_keys() {
    assert_eq!(hf_name("token_embd.weight").unwrap(), "model.embed_tokens.weight");
    assert_eq!(hf_name("blk.7.attn_q.weight").unwrap(), "model.layers.7.self_attn.q_proj.weight");
    assert_eq!(hf_name("blk.0.attn_k.bias").unwrap(), "model.layers.0.self_attn.k_proj.bias");
    assert_eq!(hf_name("blk.29.ffn_down.weight").unwrap(), "model.layers.29.mlp.down_proj.weight");
    assert_eq!(hf_name("blk.3.ffn_norm.weight").unwrap(), "model.layers.3.post_attention_layernorm.weight");
    assert!(hf_name("rope_freqs.weight").is_none());
}

#[test]
fn gguf_names_and_the_qk_permutation_invert_the_reading_side() {
    use loralab_core::gguf::{gguf_name, permute};
    for hf in [
        "model.embed_tokens.weight",
        "model.norm.weight",
        "lm_head.weight",
        "model.layers.11.self_attn.q_proj.weight",
        "model.layers.0.self_attn.k_proj.bias",
        "model.layers.3.mlp.gate_proj.weight",
        "model.layers.3.post_attention_layernorm.weight",
    ] {
        let g = gguf_name(hf).unwrap();
        assert_eq!(hf_name(&g).unwrap(), hf, "{g}");
    }
    assert!(gguf_name("model.rotary_emb.inv_freq").is_none());
    // llama.cpp's permutation, then the loader's undoing of it: the identity, and not itself one
    let w = Tensor::arange(0f32, 8.0 * 16.0 * 3.0, &Device::Cpu).unwrap().reshape((8 * 16, 3)).unwrap();
    let p = permute(&w, 8).unwrap();
    assert!(max_abs_diff(&p, &w) > 1.0);
    let cfg: loralab_core::model::LlamaConfig = serde_json::from_value(serde_json::json!({
        "model_type": "llama", "vocab_size": 8, "hidden_size": 48, "intermediate_size": 8,
        "num_hidden_layers": 1, "num_attention_heads": 8, "num_key_value_heads": 8,
        "rms_norm_eps": 1e-5, "max_position_embeddings": 16
    }))
    .unwrap();
    let back = loralab_core::gguf::to_hf_layout("blk.0.attn_q.weight", p, &cfg).unwrap();
    assert_eq!(max_abs_diff(&back, &w), 0.0);
}

#[test]
fn a_truncated_gguf_is_a_clear_error() {
    let bytes = std::fs::read(smollm2()).unwrap();
    let p = std::env::temp_dir().join(format!("loralab-truncated-{}.gguf", std::process::id()));
    std::fs::write(&p, &bytes[..4096]).unwrap();
    let err = load_gguf(&p, DType::F32).err().expect("a truncated file must not load").to_string();
    assert!(err.contains(&p.display().to_string()) && (err.contains("GGUF") || err.contains("tensor")), "{err}");
    let _ = std::fs::remove_file(p);
}

#[test]
fn tokenizer_from_gguf_metadata_matches_the_reference_on_300_strings() {
    let tok = loralab_core::data::load_tokenizer(&smollm2()).unwrap();
    let fx: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(repo().join("tests/reference/gguf_tokenizer_ref.json")).unwrap())
            .unwrap();
    assert_eq!(fx.len(), 300);
    for case in &fx {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let got = tok.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(got, want, "{text:?}");
        assert_eq!(tok.decode(&got, false).unwrap(), text, "round trip of {text:?}");
    }
}

/// Greedy continuation, the whole sequence each step (generation with a KV cache is the evaluation issue's).
fn greedy(model: &loralab_core::model::Llama, tok: &tokenizers::Tokenizer, prompt: &str, n: usize) -> String {
    let mut ids = tok.encode(prompt, false).unwrap().get_ids().to_vec();
    let start = ids.len();
    for _ in 0..n {
        let x = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let logits = model.forward(&x, &mut ForwardCtx { train: false, rng: &mut Rng::new(0) }).unwrap();
        ids.push(logits.get(ids.len() - 1).unwrap().argmax(0).unwrap().to_scalar::<u32>().unwrap());
    }
    tok.decode(&ids[start..], false).unwrap()
}

#[test]
fn greedy_decoding_of_factual_prompts_is_sensible() {
    let (model, _) = load_gguf(&smollm2(), DType::F32).unwrap();
    let tok = loralab_core::data::load_tokenizer(&smollm2()).unwrap();
    let france = greedy(&model, &tok, "The capital of France is", 4);
    assert!(france.contains("Paris"), "{france:?}");
    let chat = "<|im_start|>user\nWhat is the capital of Japan?<|im_end|>\n<|im_start|>assistant\n";
    let japan = greedy(&model, &tok, chat, 8);
    assert!(japan.contains("Tokyo"), "{japan:?}");
}

#[test]
fn a_few_lora_steps_on_smollm2_lower_the_loss_on_their_examples() {
    let out = std::env::temp_dir().join(format!("loralab-smollm2-lora-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let data = out.join("facts.jsonl");
    let rows = [
        ("What is loralab?", "A lab that compares LoRA with full fine-tuning."),
        ("Who wrote loralab?", "Its founding engineers."),
        ("What does LoRA train?", "Low-rank adapters on frozen weights."),
        ("What is forgetting?", "Losing skill on the source domain."),
    ];
    let text: String =
        rows.iter().map(|(p, r)| serde_json::json!({"prompt": p, "response": r}).to_string() + "\n").collect();
    std::fs::write(&data, text).unwrap();
    let cfg = serde_json::json!({
        "name": "smollm2-lora", "run_id": "r", "out_dir": out, "model": {"path": smollm2()},
        "data": {"format": "ift", "train": data, "seq_len": 64, "cache_dir": out.join("cache")},
        "method": {"kind": "lora", "rank": 8, "dropout": 0.0},
        "optim": {"name": "adamw", "lr": 2e-3}, "schedule": {"kind": "constant", "warmup_frac": 0.0},
        "train": {"steps": 6, "micro_batch": 4}
    });
    let mut losses = vec![];
    let s = loralab_core::train::run(
        loralab_core::parse_config(&cfg.to_string()).unwrap(),
        &mut |e: &loralab_core::Event| {
            if let loralab_core::Event::Progress(p) = e {
                losses.push(p.loss)
            }
        },
        &std::sync::atomic::AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(s.status, loralab_core::train::Outcome::Completed);
    // every step sees the same four examples: the loss on them must fall
    assert!(losses[5] < 0.8 * losses[0], "{losses:?}");
    assert!(std::path::Path::new(&s.output).join("adapter_model.safetensors").is_file());
    let _ = std::fs::remove_dir_all(&out);
}

fn fixture_gguf() -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(repo().join("tests/reference/gguf_fixture.safetensors"), &Device::Cpu).unwrap()
}

#[test]
fn llama_q_k_are_unpermuted_and_qwen2_left_alone_giving_back_the_hf_tensors() {
    let fx = fixture_gguf();
    for arch in ["llama", "qwen2"] {
        let (model, _) = load_gguf(&repo().join(format!("tests/reference/tiny_{arch}.gguf")), DType::F32).unwrap();
        assert_eq!(model.cfg.model_type, arch);
        assert_eq!(model.cfg.qkv_bias(), arch == "qwen2");
        assert!(!model.cfg.tie_word_embeddings, "output.weight present: untied");
        let named = model.named_weights();
        assert_eq!(named.len(), fx.keys().filter(|k| k.starts_with(&format!("{arch}."))).count());
        for (name, w) in named {
            let want = &fx[&format!("{arch}.{name}")];
            assert_eq!(max_abs_diff(w.tensor(), want), 0.0, "{arch}: {name}");
        }
    }
}

#[test]
fn every_storage_type_dequantizes_as_gguf_py_does() {
    let fx = fixture_gguf();
    let path = repo().join("tests/reference/tiny_quants.gguf");
    for ty in ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K"] {
        let got = loralab_core::gguf::read_f32(&path, &format!("q.{ty}")).unwrap();
        let want = &fx[&format!("quant.{ty}")];
        assert_eq!(got.dims(), want.dims(), "{ty}");
        let d = max_abs_diff(&got, want);
        assert!(d <= 1e-6, "{ty}: max abs difference {d:e} from gguf-py's dequantizer");
    }
}

#[test]
fn smollm2_chat_template_renders_as_jinja2_does_and_shapes_ift_prompts() {
    let chat = loralab_core::chat::ChatTemplate::find(&smollm2().to_string_lossy())
        .unwrap()
        .expect("SmolLM2 ships a chat template");
    // expected: Python's jinja2 3.1.6 rendering the same template from the same GGUF
    // (messages = [user "What is 2+2?"], add_generation_prompt = True)
    let want = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(chat.render_user("What is 2+2?").unwrap(), want);

    // IFT rows: the prompt part is the rendered turn, the loss falls on the response + <|im_end|>
    let out = std::env::temp_dir().join(format!("loralab-chat-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let data = out.join("qa.jsonl");
    std::fs::write(&data, "{\"prompt\": \"What is 2+2?\", \"response\": \"4\"}\n").unwrap();
    let cfg: loralab_core::config::DataConfig = serde_json::from_value(serde_json::json!({
        "format": "ift", "train": data, "seq_len": 64, "cache_dir": out.join("cache")
    }))
    .unwrap();
    let tok = loralab_core::data::load_tokenizer(&smollm2()).unwrap();
    let shards = loralab_core::data::prepare(&cfg, &tok, &smollm2(), 2, Some(&chat)).unwrap();
    let (ids, mask) = shards.row(0);
    let n_prompt = mask.iter().position(|&m| m == 1).unwrap();
    assert_eq!(tok.decode(&ids[..n_prompt], false).unwrap(), want);
    let resp: Vec<u32> = ids.iter().zip(mask).filter(|(_, &m)| m == 1).map(|(&i, _)| i).collect();
    assert_eq!(tok.decode(&resp, false).unwrap(), "4<|im_end|>");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn hf_tokenizer_config_templates_named_lists_and_token_objects() {
    let dir = std::env::temp_dir().join(format!("loralab-chat-hf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tc = serde_json::json!({
        "bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>",
        "chat_template": [
            {"name": "tool_use", "template": "unused"},
            {"name": "default", "template": "{{ bos_token }}{% for m in messages %}[{{ m['role'] | upper }}] {{ m['content'].strip() }}{% endfor %}{% if add_generation_prompt %} [BOT]{% endif %}"}
        ]
    });
    std::fs::write(dir.join("tokenizer_config.json"), tc.to_string()).unwrap();
    let chat = loralab_core::chat::ChatTemplate::find(&dir.to_string_lossy()).unwrap().unwrap();
    assert_eq!(chat.render_user("  hello  ").unwrap(), "<s>[USER] hello [BOT]");
    // a model without tokenizer_config.json has no template: the plain data.template applies
    assert!(loralab_core::chat::ChatTemplate::find(&repo().join("datasets/tiny").to_string_lossy()).unwrap().is_none());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn chat_records_render_every_turn_but_the_last_with_the_template() {
    let chat = loralab_core::chat::ChatTemplate::find(&smollm2().to_string_lossy()).unwrap().unwrap();
    let out = std::env::temp_dir().join(format!("loralab-chatrec-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let data = out.join("conv.jsonl");
    let conv = serde_json::json!({"messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]});
    std::fs::write(&data, format!("{conv}\n")).unwrap();
    let cfg: loralab_core::config::DataConfig = serde_json::from_value(
        serde_json::json!({"format": "chat", "train": data, "seq_len": 64, "cache_dir": out.join("cache")}),
    )
    .unwrap();
    let tok = loralab_core::data::load_tokenizer(&smollm2()).unwrap();
    let shards = loralab_core::data::prepare(&cfg, &tok, &smollm2(), 2, Some(&chat)).unwrap();
    let (ids, mask) = shards.row(0);
    let n_prompt = mask.iter().position(|&m| m == 1).unwrap();
    // expected: Python's jinja2 3.1.6 over the same template and the first four turns, add_generation_prompt
    let want = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(tok.decode(&ids[..n_prompt], false).unwrap(), want);
    let resp: Vec<u32> = ids.iter().zip(mask).filter(|(_, &m)| m == 1).map(|(&i, _)| i).collect();
    assert_eq!(tok.decode(&resp, false).unwrap(), "4<|im_end|>");

    // a conversation that does not end with the assistant is named by file and line
    std::fs::write(&data, "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}\n").unwrap();
    let cfg2 = loralab_core::config::DataConfig { cache_dir: out.join("cache2").to_string_lossy().into_owned(), ..cfg };
    let e = loralab_core::data::prepare(&cfg2, &tok, &smollm2(), 2, Some(&chat)).err().unwrap().to_string();
    assert!(e.contains("conv.jsonl, row 1") && e.contains("must end with an assistant turn"), "{e}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn sentencepiece_gguf_tokenizer_matches_sentencepiece_on_300_strings() {
    // tests/reference/gguf_spm_fixture.py: a SentencePiece BPE model (Llama-2's settings, byte
    // fallback) written as llama.cpp writes Llama-2's vocabulary: scores and types, no merges
    let tok = loralab_core::data::load_tokenizer(&repo().join("tests/reference/tiny_spm.gguf")).unwrap();
    let fx: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(repo().join("tests/reference/gguf_spm_ref.json")).unwrap()).unwrap();
    assert_eq!(fx.len(), 300);
    let mut byte_fallbacks = 0;
    for case in &fx {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let enc = tok.encode(text, false).unwrap();
        assert_eq!(enc.get_ids(), want.as_slice(), "{text:?}: {:?}", enc.get_tokens());
        byte_fallbacks += enc.get_tokens().iter().filter(|t| t.starts_with("<0x")).count();
        assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), text, "round trip of {text:?}");
    }
    assert!(byte_fallbacks > 50, "the strings must exercise byte fallback ({byte_fallbacks})");
    // add_bos_token: the post-processor puts <s> first
    assert_eq!(tok.encode("hi", true).unwrap().get_ids()[0], 1);
}

#[test]
fn pre_tokenizer_names_split_as_their_published_regexes_do() {
    use tokenizers::{NormalizedString, Normalizer, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};
    // tests/reference/gguf_pre_ref.py: each name's regex run by Python's `regex` package
    let fx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo().join("tests/reference/gguf_pre_ref.json")).unwrap()).unwrap();
    let strings: Vec<&str> = fx["strings"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    let names = fx["pieces"].as_object().unwrap();
    assert_eq!(names.len(), 4);
    for (name, want) in names {
        let (pre, norm) = loralab_core::gguf::pre_tokenizer(name).unwrap();
        let pre: tokenizers::PreTokenizerWrapper = serde_json::from_value(pre).unwrap();
        let norm: Option<tokenizers::NormalizerWrapper> = serde_json::from_value(norm).unwrap();
        for (s, want) in strings.iter().zip(want.as_array().unwrap()) {
            let mut n = NormalizedString::from(*s);
            if let Some(norm) = &norm {
                norm.normalize(&mut n).unwrap();
            }
            let mut p = PreTokenizedString::from(n);
            pre.pre_tokenize(&mut p).unwrap();
            let got: Vec<String> = p
                .get_splits(OffsetReferential::Original, OffsetType::Byte)
                .into_iter()
                .map(|(s, _, _)| s.to_string())
                .collect();
            let want: Vec<String> = want.as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
            assert_eq!(got, want, "{name}: {s:?}");
        }
    }
    assert!(loralab_core::gguf::pre_tokenizer("jais-2099").is_none());
}

#[test]
fn an_unknown_pre_tokenizer_or_tokenizer_model_is_refused_by_name() {
    use candle_core::quantized::gguf_file::{write, Value};
    let dir = std::env::temp_dir().join(format!("loralab-gguf-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tokens = Value::Array(vec![Value::String("a".into()), Value::String("b".into())]);
    for (model, pre, want) in
        [("gpt2", "jais-2099", "tokenizer.ggml.pre `jais-2099`"), ("bert", "default", "tokenizer.ggml.model `bert`")]
    {
        let p = dir.join(format!("{model}.gguf"));
        let (m, pr) = (Value::String(model.into()), Value::String(pre.into()));
        let md = [
            ("tokenizer.ggml.model", &m),
            ("tokenizer.ggml.pre", &pr),
            ("tokenizer.ggml.tokens", &tokens),
            ("tokenizer.ggml.merges", &Value::Array(vec![])),
        ];
        write(&mut std::fs::File::create(&p).unwrap(), &md, &[]).unwrap();
        let err = loralab_core::data::load_tokenizer(&p).expect_err("must be refused").to_string();
        assert!(err.contains(want) && err.contains(&p.display().to_string()) && err.contains("hint"), "{err}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn llama31_rope_freqs_tensor_becomes_the_llama3_rope_scaling_that_made_it() {
    // tests/reference/gguf_rope_fixture.py: rope_freqs.weight from factor 8, low 1, high 4, original 64
    let (model, _) = load_gguf(&repo().join("tests/reference/tiny_llama31.gguf"), DType::F32).unwrap();
    let s = model.cfg.rope_scaling.clone().expect("rope_freqs must become rope_scaling");
    assert_eq!((s.rope_type.as_str(), s.original_max_position_embeddings), ("llama3", 64));
    assert!(
        (s.factor - 8.0).abs() < 1e-5
            && (s.low_freq_factor - 1.0).abs() < 1e-9
            && (s.high_freq_factor - 4.0).abs() < 1e-3,
        "{s:?}"
    );
    let factors = loralab_core::gguf::read_f32(&repo().join("tests/reference/tiny_llama31.gguf"), "rope_freqs.weight")
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let plain = loralab_core::model::LlamaConfig { rope_scaling: None, ..model.cfg.clone() }.inv_freq().unwrap();
    for ((w, s), f) in plain.iter().zip(model.cfg.inv_freq().unwrap()).zip(factors) {
        assert!(((w / s) / f as f64 - 1.0).abs() < 1e-5, "{w} / {s} vs {f}");
    }
}
