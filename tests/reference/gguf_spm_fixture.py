"""Makes tests/reference/tiny_spm.gguf and gguf_spm_ref.json for crates/core/tests/gguf.rs:
a SentencePiece BPE tokenizer trained here with the PyPI `sentencepiece` package in Llama's
settings (identity normalization, no whitespace folding, digits split, byte fallback, a
dummy prefix), written into a GGUF file the way llama.cpp's converter writes Llama-2's
(`tokenizer.ggml.model` = llama: tokens, scores, token types; no merges), and 300 varied
strings tokenized by sentencepiece itself as the reference.

    pip install sentencepiece gguf numpy && python3 tests/reference/gguf_spm_fixture.py
"""
import io, json, os, random
import numpy as np
import sentencepiece as spm
from gguf import GGUFWriter

here = os.path.dirname(os.path.abspath(__file__))
tiny = os.path.join(here, "..", "..", "datasets", "tiny")
lines = []
for name in ["english.jsonl", "code.jsonl"]:
    with open(os.path.join(tiny, name)) as fh:
        lines += [next(iter(json.loads(l).values())) for l in fh]
lines += ["naïve café résumé déjà vu", "Привет мир", "日本語 テキスト", "x = 1234 + 5678"] * 5
model = io.BytesIO()
spm.SentencePieceTrainer.train(
    sentence_iterator=iter(lines), model_writer=model, vocab_size=600, model_type="bpe",
    normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True,
    byte_fallback=True, add_dummy_prefix=True, allow_whitespace_only_pieces=True,
    character_coverage=0.9995, max_sentence_length=100000,
    unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
sp = spm.SentencePieceProcessor(model_proto=model.getvalue())

# llama.cpp convert_hf_to_gguf.py _create_vocab_sentencepiece: token types
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
tokens, scores, types = [], [], []
for i in range(sp.vocab_size()):
    tokens.append(sp.id_to_piece(i)); scores.append(sp.get_score(i))
    types.append(UNKNOWN if sp.is_unknown(i) else CONTROL if sp.is_control(i) else UNUSED if sp.is_unused(i) else BYTE if sp.is_byte(i) else NORMAL)

w = GGUFWriter(os.path.join(here, "tiny_spm.gguf"), "llama")
w.add_tokenizer_model("llama"); w.add_tokenizer_pre("default")
w.add_token_list(tokens); w.add_token_scores(scores); w.add_token_types(types)
w.add_bos_token_id(1); w.add_eos_token_id(2); w.add_unk_token_id(0)
w.add_add_bos_token(True); w.add_add_eos_token(False); w.add_add_space_prefix(True)
w.add_tensor("token_embd.weight", np.zeros((len(tokens), 4), dtype=np.float32))
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()

rng = random.Random(13)
fixed = [
    "", " ", "  ", "a", " a", "\n", "\n\n\n", "\t\tx", "Hello, world!", "The year 2024 had 366 days.", "3.14159265358979",
    "1,000,000 and 12345678901234567890", "def f(x):\n    return x ** 2  # square\n", "for i in range(10): print(i)",
    "if (a && b) { return *p++; }", "naïve café résumé", "日本語のテキスト", "Привет, мир", "emoji 😀🚀👍🏽",
    "mixed\u00a0nbsp", "tabs\tand   spaces    runs", "can't won't I'm we'll", "    indented\n        more\n",
    "ALL CAPS SHOUTING", "¿Qué? ¡Sí!", "math: ∑ x_i ≤ ∞", "\r\nwindows\r\nlines", "The red owl plays in the river at dawn.",
    "trailing space ", " leading space", "ünïcödé ẞ ǅ", "zero\u200bwidth",
]
alphabet = list("abcdefghijklmnopqrstuvwxyz ABCDEFXYZ0123456789.,;:!?'\"()[]{}<>+-*/=_#@$%^&|\\~`\n\t") + ["é", "ß", "中", "ю", "😀", "  ", "\n\n", "1234", " the", "ing", " owl", "def "]
strings = fixed + ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(300 - len(fixed))]
out = [{"text": s, "ids": sp.encode(s)} for s in strings]
with open(os.path.join(here, "gguf_spm_ref.json"), "w") as fh:
    json.dump(out, fh, ensure_ascii=False, indent=0)
print(len(out), "strings;", sum(len(o["ids"]) for o in out), "tokens;", os.path.getsize(os.path.join(here, "tiny_spm.gguf")), "bytes")
