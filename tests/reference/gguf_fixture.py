"""Makes tests/reference/tiny_*.gguf and gguf_fixture.safetensors for crates/core/tests/gguf.rs:
- tiny_llama.gguf / tiny_qwen2.gguf: small random models written the way llama.cpp's
  converter writes them (llama: q/k rows permuted; qwen2: not, with q/k/v biases), F32, with
  the original Hugging Face tensors saved beside them: loading must give them back exactly.
- tiny_quants.gguf: one tensor per storage type (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K,
  Q5_K, Q6_K); K-quant blocks are random bytes with sane f16 scales (gguf-py cannot
  quantize K types, but dequantizes them); expected values from gguf-py's dequantizers.

    pip install numpy gguf safetensors && python3 tests/reference/gguf_fixture.py
"""
import os
import numpy as np
from gguf import GGUFWriter, GGMLQuantizationType as T, quants
from safetensors.numpy import save_file

here = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(5)
expected = {}

def permute(w, n_head):  # llama.cpp convert_hf_to_gguf.py LlamaModel.permute
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

def tiny_model(arch):
    D, F, L, NH, KV, V = 32, 48, 2, 4, 2, 40
    HD = D // NH
    w = GGUFWriter(os.path.join(here, f"tiny_{arch}.gguf"), arch)
    w.add_block_count(L); w.add_embedding_length(D); w.add_feed_forward_length(F); w.add_context_length(128)
    w.add_head_count(NH); w.add_head_count_kv(KV); w.add_rope_freq_base(10000.0); w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(V)
    w.add_tokenizer_model("gpt2"); w.add_tokenizer_pre("gpt-2")
    w.add_token_list([chr(ord("a") + i % 26) * (1 + i // 26) for i in range(V)])
    w.add_token_merges([]); w.add_eos_token_id(1); w.add_bos_token_id(0)
    def t(name, hf, arr, perm=None):
        expected[f"{arch}.{hf}"] = arr.astype(np.float32)
        w.add_tensor(name, (permute(arr, perm) if perm else arr).astype(np.float32))
    t("token_embd.weight", "model.embed_tokens.weight", rng.normal(size=(V, D)))
    t("output_norm.weight", "model.norm.weight", 1 + 0.1 * rng.normal(size=D))
    t("output.weight", "lm_head.weight", rng.normal(size=(V, D)))
    llama = arch == "llama"
    for i in range(L):
        p, h = f"blk.{i}.", f"model.layers.{i}."
        t(p + "attn_norm.weight", h + "input_layernorm.weight", 1 + 0.1 * rng.normal(size=D))
        t(p + "ffn_norm.weight", h + "post_attention_layernorm.weight", 1 + 0.1 * rng.normal(size=D))
        t(p + "attn_q.weight", h + "self_attn.q_proj.weight", rng.normal(size=(NH * HD, D)), NH if llama else None)
        t(p + "attn_k.weight", h + "self_attn.k_proj.weight", rng.normal(size=(KV * HD, D)), KV if llama else None)
        t(p + "attn_v.weight", h + "self_attn.v_proj.weight", rng.normal(size=(KV * HD, D)))
        t(p + "attn_output.weight", h + "self_attn.o_proj.weight", rng.normal(size=(D, NH * HD)))
        if not llama:
            t(p + "attn_q.bias", h + "self_attn.q_proj.bias", rng.normal(size=NH * HD))
            t(p + "attn_k.bias", h + "self_attn.k_proj.bias", rng.normal(size=KV * HD))
            t(p + "attn_v.bias", h + "self_attn.v_proj.bias", rng.normal(size=KV * HD))
        t(p + "ffn_gate.weight", h + "mlp.gate_proj.weight", rng.normal(size=(F, D)))
        t(p + "ffn_up.weight", h + "mlp.up_proj.weight", rng.normal(size=(F, D)))
        t(p + "ffn_down.weight", h + "mlp.down_proj.weight", rng.normal(size=(D, F)))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()

tiny_model("llama")
tiny_model("qwen2")

# --- one tensor per storage type
w = GGUFWriter(os.path.join(here, "tiny_quants.gguf"), "llama")
x = rng.normal(size=(2, 512)).astype(np.float32)
def f16_bytes(n, lo, hi):
    return rng.uniform(lo, hi, size=n).astype(np.float16).view(np.uint8).reshape(n, 2)
for ty in [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1]:
    q = quants.quantize(x, ty)
    w.add_tensor(f"q.{ty.name}", q, raw_dtype=ty)
    expected[f"quant.{ty.name}"] = quants.dequantize(q, ty).reshape(x.shape).astype(np.float32)
for ty, size in [(T.Q4_K, 144), (T.Q5_K, 176), (T.Q6_K, 210)]:
    blocks = rng.integers(0, 256, size=(4, size), dtype=np.uint8)  # 4 blocks of 256 values = (2, 512)
    if ty in (T.Q4_K, T.Q5_K):  # d, dmin: the first two f16
        blocks[:, 0:2] = f16_bytes(4, 0.01, 0.1); blocks[:, 2:4] = f16_bytes(4, 0.0, 0.05)
    else:  # Q6_K: d is the last f16
        blocks[:, size - 2:] = f16_bytes(4, 0.001, 0.01)
    raw = blocks.reshape(2, 2 * size)
    w.add_tensor(f"q.{ty.name}", raw, raw_dtype=ty)
    expected[f"quant.{ty.name}"] = quants.dequantize(raw, ty).reshape(2, 512).astype(np.float32)
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()

save_file(expected, os.path.join(here, "gguf_fixture.safetensors"))
print(len(expected), "expected tensors;", {k: os.path.getsize(os.path.join(here, k)) for k in ["tiny_llama.gguf", "tiny_qwen2.gguf", "tiny_quants.gguf"]})
