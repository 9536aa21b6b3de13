"""What loralab's GGUF exports are, read by tools that are not loralab (tests/export.test.ts).

The `gguf` package (llama.cpp's own reader and dequantizers) reads every tensor back; each is
compared with what it must be, computed here from the Hugging Face side with numpy: the
source's safetensors under llama.cpp's names, q/k rows permuted as llama.cpp's converter
permutes them, an adapter merged as W + s·B·A, a LoRA's A and B (B permuted). llama.cpp itself
(llama-cpp-python) then tokenizes and runs each GGUF, the LoRA through its --lora path, and
its logits are compared with transformers' (and PEFT's) on the same text.

    python scripts/gguf_check.py JOB.json   # prints one JSON object of measurements

JOB: {"hf": DIR, "adapter": DIR, "texts": [...], "gguf": {"f32": F, "f16": F, "q8_0": F},
      "merged": F, "lora": F, "lora_patterned": F, "adapter_patterned": DIR}
"""
import json
import sys

import numpy as np
import torch
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors.numpy import load_file

job = json.load(open(sys.argv[1]))
cfg = json.load(open(f"{job['hf']}/config.json"))
H, KV = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
PERMUTED = cfg["model_type"] in ("llama", "mistral")

# llama.cpp's names for a Llama's tensors (its gguf-py tensor_mapping, written out)
MODULES = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_name(hf):
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if hf in fixed:
        return fixed[hf]
    _, _, layer, rest = hf.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{MODULES[module]}.{kind}"


def permute(w, heads):
    # convert_hf_to_gguf.py, LlamaModel.permute
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_layout(name, w):
    if PERMUTED and ".attn_q." in name:
        return permute(w, H)
    if PERMUTED and ".attn_k." in name:
        return permute(w, KV)
    return w


def read(path):
    r = GGUFReader(path)
    tensors = {}
    for t in r.tensors:
        shape = [int(d) for d in reversed(t.shape)]
        tensors[t.name] = (t.tensor_type.name, dequantize(t.data, t.tensor_type).astype(np.float64).reshape(shape))
    md = {}
    for k, f in r.fields.items():
        if not f.data:
            continue
        v = [f.parts[i] for i in f.data]
        if f.types[0].name == "STRING":
            md[k] = bytes(v[0]).decode()
        elif f.types[0].name == "ARRAY":
            md[k] = [bytes(x).decode() if f.types[-1].name == "STRING" else x.tolist()[0] for x in v]
        else:
            md[k] = v[0].tolist()[0]
    return tensors, md


def adapter_factors(d):
    ac = json.load(open(f"{d}/adapter_config.json"))
    st = load_file(f"{d}/adapter_model.safetensors")
    out = {}
    for k, a in st.items():
        if ".lora_A." not in k:
            continue
        module = k.split("base_model.model.", 1)[1].split(".lora_A.")[0]
        b = st[k.replace(".lora_A.", ".lora_B.")]
        r = a.shape[0]
        short = module.rsplit(".", 1)[1]
        alpha = ac.get("alpha_pattern", {}).get(short, ac["lora_alpha"])
        scale = alpha / (r ** 0.5 if ac.get("use_rslora") else r)
        out[module] = (a.astype(np.float64), b.astype(np.float64), scale)
    return out, ac


base = {k: v.astype(np.float64) for k, v in load_file(f"{job['hf']}/model.safetensors").items()}
factors, ac = adapter_factors(job["adapter"])
merged = dict(base)
for module, (a, b, s) in factors.items():
    merged[f"{module}.weight"] = base[f"{module}.weight"] + s * b @ a

res = {"files": {}}


def compare(label, path, expected):
    tensors, md = read(path)
    want = {gguf_name(k): llama_layout(gguf_name(k), v) for k, v in expected.items()}
    missing = sorted(set(want) - set(tensors))
    extra = sorted(set(tensors) - set(want))
    err = {}
    for name, w in want.items():
        if name in tensors:
            t, got = tensors[name]
            scale = np.abs(w).max() or 1.0
            err[name] = (t, float(np.abs(got - w).max() / scale))
    res["files"][label] = {
        "missing": missing, "extra": extra,
        "max_rel_err": max(e for _, e in err.values()),
        "types": sorted({t for t, _ in err.values()}),
        "norm_types": sorted({err[n][0] for n in err if n.endswith("_norm.weight")}),
        "metadata": {k: v for k, v in md.items() if not k.startswith("tokenizer.ggml.") or k.endswith("_id") or k in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.add_bos_token")},
        "n_tokens": len(md.get("tokenizer.ggml.tokens", [])),
    }


for ty, path in job["gguf"].items():
    compare(ty, path, base)
compare("merged", job["merged"], merged)


def lora_check(label, path, adapter_dir):
    fs, _ = adapter_factors(adapter_dir)
    tensors, md = read(path)
    alpha = md["adapter.lora.alpha"]
    worst = 0.0
    names = set()
    for module, (a, b, s) in fs.items():
        g = gguf_name(f"{module}.weight")
        names |= {f"{g}.lora_a", f"{g}.lora_b"}
        ga, gb = tensors[f"{g}.lora_a"][1], tensors[f"{g}.lora_b"][1]
        r = a.shape[0]
        # llama.cpp applies lora_b @ lora_a scaled by alpha / r (rank = lora_b's ne[0]), or by 1 when alpha is 0
        applied = (alpha / r if alpha else 1.0) * gb @ ga
        want = llama_layout(g, s * b @ a)
        worst = max(worst, float(np.abs(applied - want).max() / (np.abs(want).max() or 1.0)))
    res["files"][label] = {
        "alpha": alpha, "general.type": md.get("general.type"), "adapter.type": md.get("adapter.type"),
        "architecture": md.get("general.architecture"), "max_rel_err_delta": worst,
        "missing": sorted(names - set(tensors)), "extra": sorted(set(tensors) - names),
    }


lora_check("lora", job["lora"], job["adapter"])
lora_check("lora_patterned", job["lora_patterned"], job["adapter_patterned"])

# ---- llama.cpp itself against transformers / PEFT
import llama_cpp  # noqa: E402
from peft import PeftModel  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

tok = AutoTokenizer.from_pretrained(job["hf"])
hf_model = AutoModelForCausalLM.from_pretrained(job["hf"], dtype=torch.float32).eval()


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double().numpy()


def cpp_logits(path, ids, lora=None):
    llm = llama_cpp.Llama(model_path=path, lora_path=lora, n_ctx=256, logits_all=True, verbose=False,
                          n_threads=2, n_batch=256)
    llm.eval(ids)
    out = np.array(llm.scores[: len(ids)], dtype=np.float64)
    return out, llm


def with_adapter(d):
    m = AutoModelForCausalLM.from_pretrained(job["hf"], dtype=torch.float32)
    return PeftModel.from_pretrained(m, d).eval()


runs = [("f32", job["gguf"]["f32"], None, hf_model), ("q8_0", job["gguf"]["q8_0"], None, hf_model),
        ("lora", job["gguf"]["f32"], job["lora"], with_adapter(job["adapter"])),
        ("lora_patterned", job["gguf"]["f32"], job["lora_patterned"], with_adapter(job["adapter_patterned"])),
        ("merged", job["merged"], None, with_adapter(job["adapter"]))]
res["llama_cpp"] = {}
for label, path, lora, ref in runs:
    worst, agree, n, same_tokens = 0.0, 0, 0, True
    for text in job["texts"]:
        ids = tok(text).input_ids
        got, llm = cpp_logits(path, ids, lora)
        # the file's own add_bos_token decides, as llama-cli's does (not the caller's flag)
        same_tokens &= llm.tokenize(text.encode(), add_bos=llm._model.add_bos_token(), special=False) == ids
        want = hf_logits(ref, ids)
        worst = max(worst, float(np.abs(got - want).max()))
        agree += int((got.argmax(-1) == want.argmax(-1)).sum())
        n += len(ids)
        del llm
    res["llama_cpp"][label] = {"max_abs_logit_diff": worst, "argmax_agree": agree / n, "tokens_equal": same_tokens}
# the vLLM directory of the patterned adapter (its per-module scales folded into B, one
# lora_alpha / r), loaded by PEFT, gives the patterned adapter's logits
if job.get("vllm_patterned"):
    ids = tok(job["texts"][1]).input_ids
    res["vllm_patterned_diff"] = float(np.abs(hf_logits(with_adapter(job["vllm_patterned"]), ids) - hf_logits(with_adapter(job["adapter_patterned"]), ids)).max())
# the LoRA moves the logits by more than the tolerance, or the check above would not see it
ids = tok(job["texts"][0]).input_ids
res["lora_effect"] = float(np.abs(hf_logits(with_adapter(job["adapter"]), ids) - hf_logits(hf_model, ids)).max())
print(json.dumps(res))
