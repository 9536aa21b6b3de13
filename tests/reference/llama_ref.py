"""Independent reference for the engine's numbers: a Llama forward pass, masked loss,
gradient clipping and AdamW written directly in numpy, differentiated by the `autograd`
package (HIPS), all in f64. Run once to (re)make the fixture that
crates/core/tests/reference.rs asserts against:

    pip install numpy autograd safetensors && python3 tests/reference/llama_ref.py

It shares no code with the engine; only the maths of Hugging Face's Llama is common.
"""
import json, os
import numpy as onp
import autograd.numpy as np
from autograd import grad
from safetensors.numpy import save_file

here = os.path.dirname(os.path.abspath(__file__))
rng = onp.random.default_rng(7)

cfg = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 23, "hidden_size": 16,
    "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 64, "tie_word_embeddings": False,
    "attention_bias": True, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8},
}
D, F, V, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
NH, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
HD = D // NH

# ---------------------------------------------------------------- weights
W = {"model.embed_tokens.weight": rng.normal(0, 0.5, (V, D)), "model.norm.weight": 1 + 0.1 * rng.normal(size=D),
     "lm_head.weight": rng.normal(0, 0.3, (V, D))}
for i in range(L):
    p = f"model.layers.{i}"
    W[f"{p}.input_layernorm.weight"] = 1 + 0.1 * rng.normal(size=D)
    W[f"{p}.post_attention_layernorm.weight"] = 1 + 0.1 * rng.normal(size=D)
    for m, o, inp in [("q_proj", NH * HD, D), ("k_proj", KV * HD, D), ("v_proj", KV * HD, D), ("o_proj", D, NH * HD)]:
        W[f"{p}.self_attn.{m}.weight"] = rng.normal(0, 0.3, (o, inp))
        W[f"{p}.self_attn.{m}.bias"] = rng.normal(0, 0.1, o)
    W[f"{p}.mlp.gate_proj.weight"] = rng.normal(0, 0.3, (F, D))
    W[f"{p}.mlp.up_proj.weight"] = rng.normal(0, 0.3, (F, D))
    W[f"{p}.mlp.down_proj.weight"] = rng.normal(0, 0.3, (D, F))
names = sorted(W)

# ---------------------------------------------------------------- rope (HF, llama3 scaling)
def inv_freq():
    f = 1.0 / cfg["rope_theta"] ** (onp.arange(0, HD, 2) / HD)
    s = cfg["rope_scaling"]
    old, lo, hi, fac = s["original_max_position_embeddings"], s["low_freq_factor"], s["high_freq_factor"], s["factor"]
    out = []
    for v in f:
        wl = 2 * onp.pi / v
        if wl < old / hi:
            out.append(v)
        elif wl > old / lo:
            out.append(v / fac)
        else:
            sm = (old / wl - lo) / (hi - lo)
            out.append((1 - sm) * v / fac + sm * v)
    return onp.array(out)

def rope(t):
    ang = onp.arange(t)[:, None] * inv_freq()[None, :]
    ang = onp.concatenate([ang, ang], axis=-1)
    return onp.cos(ang), onp.sin(ang)

def rotate_half(x):
    return np.concatenate([-x[..., HD // 2:], x[..., :HD // 2]], axis=-1)

# ---------------------------------------------------------------- model
def rms(x, w):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + cfg["rms_norm_eps"]) * w

def linear(x, P, name, lora, scale):
    y = np.dot(x, P[name + ".weight"].T)
    if name + ".bias" in P:
        y = y + P[name + ".bias"]
    if lora is not None and name in lora["targets"]:
        y = y + scale * np.dot(np.dot(x, lora["A"][name].T), lora["B"][name].T)
    return y

def forward(P, ids, lora=None, scale=0.0):
    b, t = ids.shape
    cos, sin = rope(t)
    mask = onp.triu(onp.full((t, t), -onp.inf), 1)
    x = P["model.embed_tokens.weight"][ids.reshape(-1)]  # (b*t, D)
    for i in range(L):
        p = f"model.layers.{i}"
        h = rms(x, P[f"{p}.input_layernorm.weight"])
        q = linear(h, P, f"{p}.self_attn.q_proj", lora, scale).reshape(b, t, NH, HD).transpose((0, 2, 1, 3))
        k = linear(h, P, f"{p}.self_attn.k_proj", lora, scale).reshape(b, t, KV, HD).transpose((0, 2, 1, 3))
        v = linear(h, P, f"{p}.self_attn.v_proj", lora, scale).reshape(b, t, KV, HD).transpose((0, 2, 1, 3))
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = NH // KV
        k = np.repeat(k, rep, axis=1)  # kv head j serves query heads j*rep .. j*rep+rep-1
        v = np.repeat(v, rep, axis=1)
        s = np.einsum("bhtd,bhsd->bhts", q, k) / onp.sqrt(HD) + mask
        s = s - onp.max(s._value if hasattr(s, "_value") else s, axis=-1, keepdims=True)
        a = np.exp(s) / np.sum(np.exp(s), axis=-1, keepdims=True)
        y = np.einsum("bhts,bhsd->bhtd", a, v).transpose((0, 2, 1, 3)).reshape(b * t, NH * HD)
        x = x + linear(y, P, f"{p}.self_attn.o_proj", lora, scale)
        h = rms(x, P[f"{p}.post_attention_layernorm.weight"])
        g = linear(h, P, f"{p}.mlp.gate_proj", lora, scale)
        u = linear(h, P, f"{p}.mlp.up_proj", lora, scale)
        x = x + linear(g / (1 + np.exp(-g)) * u, P, f"{p}.mlp.down_proj", lora, scale)
    x = rms(x, P["model.norm.weight"])
    return np.dot(x, P["lm_head.weight"].T)  # (b*t, V)

def loss_fn(logits, targets, mask):
    m = onp.max(logits._value if hasattr(logits, "_value") else logits, axis=-1, keepdims=True)
    lse = np.log(np.sum(np.exp(logits - m), axis=-1)) + m[:, 0]
    picked = logits[onp.arange(len(targets)), targets]
    return np.sum((lse - picked) * mask) / onp.sum(mask)

# ---------------------------------------------------------------- data: 4 batches of (2, 7)
B, T, STEPS = 2, 7, 4
batches = []
for s in range(STEPS):
    ids = rng.integers(0, V, (B, T))
    tok_mask = (rng.random((B, T)) > 0.3).astype(onp.float64)
    targets = onp.concatenate([ids[:, 1:], onp.zeros((B, 1), dtype=ids.dtype)], axis=1).reshape(-1)
    mask = onp.concatenate([tok_mask[:, 1:], onp.zeros((B, 1))], axis=1).reshape(-1)
    batches.append((ids, tok_mask, targets, mask))

# ---------------------------------------------------------------- AdamW (torch), clipping (torch)
LR, BETAS, EPS, WD, CLIP = 1e-2, (0.9, 0.95), 1e-8, 0.1, 1.0

def train(params, loss_of):
    m = {k: onp.zeros_like(v) for k, v in params.items()}
    v = {k: onp.zeros_like(x) for k, x in params.items()}
    losses, norms = [], []
    for s, (ids, _, targets, mask) in enumerate(batches):
        L_, g = loss_of(params, ids, targets, mask), grad(loss_of)(params, ids, targets, mask)
        losses.append(float(L_))
        norm = onp.sqrt(sum(onp.sum(g[k] ** 2) for k in g))
        norms.append(float(norm))
        coef = min(1.0, CLIP / (norm + 1e-6))
        t = s + 1
        new = {}
        for k in params:
            gk = g[k] * coef
            p = params[k] * (1 - LR * WD)
            m[k] = BETAS[0] * m[k] + (1 - BETAS[0]) * gk
            v[k] = BETAS[1] * v[k] + (1 - BETAS[1]) * gk * gk
            mh, vh = m[k] / (1 - BETAS[0] ** t), v[k] / (1 - BETAS[1] ** t)
            new[k] = p - LR * mh / (onp.sqrt(vh) + EPS)
        params = new
    return params, losses, norms

out = {f"w.{k}": W[k] for k in names}
ids0, tm0, _, _ = batches[0]
out["expected.logits"] = onp.asarray(forward(W, ids0))
for s, (ids, tok_mask, _, _) in enumerate(batches):
    out[f"batch{s}.ids"] = ids.astype(onp.int64)
    out[f"batch{s}.mask"] = tok_mask

# full fine-tuning: every weight trains
full_loss = lambda P, ids, tg, mk: loss_fn(forward(P, ids), tg, mk)
P_full, full_losses, full_norms = train(dict(W), full_loss)
for k in names:
    out[f"full.{k}"] = P_full[k]

# LoRA r=3 on q,v,down (alpha 6 -> scale 2); A random, B = 0 as in PEFT; base frozen
R, ALPHA = 3, 6.0
targets = [f"model.layers.{i}.{m}" for i in range(L) for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")]
A0, B0 = {}, {}
for n in targets:
    o, inp = W[n + ".weight"].shape
    A0[n] = rng.uniform(-1 / onp.sqrt(inp), 1 / onp.sqrt(inp), (R, inp))
    B0[n] = onp.zeros((o, R))
    out[f"lora_init.{n}.A"] = A0[n]
lora_params = {**{f"{n}::A": A0[n] for n in targets}, **{f"{n}::B": B0[n] for n in targets}}
def lora_loss(P, ids, tg, mk):
    lora = {"targets": targets, "A": {n: P[f"{n}::A"] for n in targets}, "B": {n: P[f"{n}::B"] for n in targets}}
    return loss_fn(forward(W, ids, lora, ALPHA / R), tg, mk)
P_lora, lora_losses, lora_norms = train(lora_params, lora_loss)
for n in targets:
    out[f"lora.{n}.A"] = P_lora[f"{n}::A"]
    out[f"lora.{n}.B"] = P_lora[f"{n}::B"]

save_file({k: onp.ascontiguousarray(v) for k, v in out.items()}, os.path.join(here, "llama_ref.safetensors"))
with open(os.path.join(here, "llama_ref.json"), "w") as f:
    json.dump({"config": cfg, "lr": LR, "betas": BETAS, "eps": EPS, "weight_decay": WD, "grad_clip": CLIP,
               "lora": {"rank": R, "alpha": ALPHA, "targets": ["q_proj", "v_proj", "down_proj"]},
               "full_losses": full_losses, "full_grad_norms": full_norms,
               "lora_losses": lora_losses, "lora_grad_norms": lora_norms}, f, indent=2)
print("full losses", full_losses)
print("lora losses", lora_losses)
