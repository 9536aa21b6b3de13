"""Makes tests/reference/tiny_llama31.gguf for crates/core/tests/gguf.rs: a small random
llama-architecture model whose Llama-3.1 rope scaling is stored the way llama.cpp's
converter stores it, as a `rope_freqs.weight` tensor of per-frequency factors
(convert_hf_to_gguf.py, LlamaModel.generate_extra_tensors), not as metadata. loralab must
recover rope_scaling {llama3, factor 8, low 1, high 4, original_max_position_embeddings 64}.

    pip install numpy gguf && python3 tests/reference/gguf_rope_fixture.py
"""
import math, os
import numpy as np
from gguf import GGUFWriter

here = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(31)
D, F, L, NH, KV, V, THETA = 64, 96, 1, 2, 1, 40, 10000.0
HD = D // NH
factor, low_freq_factor, high_freq_factor, old_context_len = 8.0, 1.0, 4.0, 64
freqs = 1.0 / (THETA ** (np.arange(0, HD, 2, dtype=np.float64) / HD))
low_freq_wavelen, high_freq_wavelen = old_context_len / low_freq_factor, old_context_len / high_freq_factor
rope_factors = []
for freq in freqs:
    wavelen = 2 * math.pi / freq
    if wavelen < high_freq_wavelen:
        rope_factors.append(1)
    elif wavelen > low_freq_wavelen:
        rope_factors.append(factor)
    else:
        smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
        rope_factors.append(1 / ((1 - smooth) / factor + smooth))

w = GGUFWriter(os.path.join(here, "tiny_llama31.gguf"), "llama")
w.add_block_count(L); w.add_embedding_length(D); w.add_feed_forward_length(F); w.add_context_length(1024)
w.add_head_count(NH); w.add_head_count_kv(KV); w.add_rope_freq_base(THETA); w.add_layer_norm_rms_eps(1e-5); w.add_vocab_size(V)
w.add_tokenizer_model("gpt2"); w.add_tokenizer_pre("llama-bpe")
w.add_token_list([chr(ord("a") + i % 26) * (1 + i // 26) for i in range(V)]); w.add_token_merges(["a a"])
w.add_tensor("rope_freqs.weight", np.array(rope_factors, dtype=np.float32))
def t(name, *shape):
    w.add_tensor(name, (rng.normal(size=shape) * 0.2).astype(np.float32))
t("token_embd.weight", V, D); t("output_norm.weight", D); t("output.weight", V, D)
for i in range(L):
    p = f"blk.{i}."
    t(p + "attn_norm.weight", D); t(p + "ffn_norm.weight", D)
    t(p + "attn_q.weight", NH * HD, D); t(p + "attn_k.weight", KV * HD, D); t(p + "attn_v.weight", KV * HD, D); t(p + "attn_output.weight", D, NH * HD)
    t(p + "ffn_gate.weight", F, D); t(p + "ffn_up.weight", F, D); t(p + "ffn_down.weight", D, F)
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
print("rope factors", [round(float(x), 4) for x in rope_factors])
