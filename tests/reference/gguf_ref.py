"""Independent reference for loralab's GGUF loading: reads SmolLM2-135M-Instruct.Q4_1.gguf
with the PyPI `gguf` package (its own dequantizers), undoes llama.cpp's q/k row
permutation, and runs a plain numpy Llama forward pass in f64 over fixed token ids.
Writes gguf_ref.safetensors (logits of two positions) for crates/core/tests/gguf.rs.

    bun run fetch smollm2 && pip install numpy gguf safetensors && python3 tests/reference/gguf_ref.py
"""
import os, sys
import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors.numpy import save_file

here = os.path.dirname(os.path.abspath(__file__))
path = os.path.join(os.environ.get("LORALAB_CACHE", os.path.expanduser("~/.cache/loralab")), "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
r = GGUFReader(path)
md = {k: f.parts[f.data[0]] for k, f in r.fields.items() if f.data}
num = lambda k: float(md[k][0])
L, D, NH, KV = int(num("llama.block_count")), int(num("llama.embedding_length")), int(num("llama.attention.head_count")), int(num("llama.attention.head_count_kv"))
HD, EPS, THETA = D // NH, num("llama.attention.layer_norm_rms_epsilon"), num("llama.rope.freq_base")

W = {}
for t in r.tensors:
    a = dequantize(t.data, t.tensor_type).astype(np.float64).reshape([int(x) for x in reversed(t.shape)])
    W[t.name] = a

def unpermute(w, h):  # llama.cpp stored w.reshape(h, 2, d/2, in).swapaxes(1, 2)
    return w.reshape(h, w.shape[0] // h // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

for i in range(L):
    W[f"blk.{i}.attn_q.weight"] = unpermute(W[f"blk.{i}.attn_q.weight"], NH)
    W[f"blk.{i}.attn_k.weight"] = unpermute(W[f"blk.{i}.attn_k.weight"], KV)

def rms(x, w):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + EPS) * w

ids = np.array([1, 504, 3458, 282, 4536, 314, 2, 30, 1024, 17])
T = len(ids)
inv = 1.0 / THETA ** (np.arange(0, HD, 2) / HD)
ang = np.arange(T)[:, None] * inv[None, :]
ang = np.concatenate([ang, ang], -1)
cos, sin = np.cos(ang), np.sin(ang)
rot = lambda x: np.concatenate([-x[..., HD // 2:], x[..., :HD // 2]], -1)
mask = np.triu(np.full((T, T), -np.inf), 1)

x = W["token_embd.weight"][ids]
for i in range(L):
    p = f"blk.{i}."
    h = rms(x, W[p + "attn_norm.weight"])
    q = (h @ W[p + "attn_q.weight"].T).reshape(T, NH, HD).transpose(1, 0, 2)
    k = (h @ W[p + "attn_k.weight"].T).reshape(T, KV, HD).transpose(1, 0, 2)
    v = (h @ W[p + "attn_v.weight"].T).reshape(T, KV, HD).transpose(1, 0, 2)
    q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
    k, v = np.repeat(k, NH // KV, 0), np.repeat(v, NH // KV, 0)
    s = q @ k.transpose(0, 2, 1) / np.sqrt(HD) + mask
    a = np.exp(s - s.max(-1, keepdims=True)); a /= a.sum(-1, keepdims=True)
    x = x + (a @ v).transpose(1, 0, 2).reshape(T, D) @ W[p + "attn_output.weight"].T
    h = rms(x, W[p + "ffn_norm.weight"])
    g = h @ W[p + "ffn_gate.weight"].T
    x = x + ((g / (1 + np.exp(-g))) * (h @ W[p + "ffn_up.weight"].T)) @ W[p + "ffn_down.weight"].T
x = rms(x, W["output_norm.weight"])
logits = x @ W.get("output.weight", W["token_embd.weight"]).T
save_file({"ids": ids.astype(np.int64), "logits.pos3": logits[3].astype(np.float32), "logits.last": logits[-1].astype(np.float32)},
          os.path.join(here, "gguf_ref.safetensors"))
print("argmax per position", logits.argmax(-1).tolist())
