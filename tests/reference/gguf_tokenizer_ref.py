"""Reference tokenizations for loralab's GGUF tokenizer: the PyPI `tokenizers` package's
byte-level BPE over the vocabulary and merges read from the GGUF file with the PyPI `gguf`
package, with SmolLM2's published pre-tokenizer (individual digits, then GPT-2 byte-level)
and its control tokens. Writes gguf_tokenizer_ref.json (300 varied strings and their ids)
for crates/core/tests/gguf.rs.

    bun run fetch smollm2 && pip install gguf tokenizers && python3 tests/reference/gguf_tokenizer_ref.py
"""
import json, os, random
from gguf import GGUFReader
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

here = os.path.dirname(os.path.abspath(__file__))
path = os.path.join(os.environ.get("LORALAB_CACHE", os.path.expanduser("~/.cache/loralab")), "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
f = GGUFReader(path).fields
tokens = [bytes(f["tokenizer.ggml.tokens"].parts[i]).decode() for i in f["tokenizer.ggml.tokens"].data]
merges = [tuple(bytes(f["tokenizer.ggml.merges"].parts[i]).decode().split(" ")) for i in f["tokenizer.ggml.merges"].data]
types = [int(f["tokenizer.ggml.token_type"].parts[i][0]) for i in f["tokenizer.ggml.token_type"].data]
tk = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
tk.decoder = decoders.ByteLevel()
tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3])

rng = random.Random(11)
fixed = [
    "", " ", "  ", "\n", "\n\n\n", "\t\tx", "Hello, world!", "The year 2024 had 366 days.", "3.14159265358979",
    "1,000,000 and 12345678901234567890", "def f(x):\n    return x ** 2  # square\n", "for i in range(10): print(i)",
    "if (a && b) { return *p++; }", "SELECT * FROM t WHERE id = 42;", "naïve café résumé", "日本語のテキスト", "Привет, мир",
    "emoji 😀🚀👍🏽", "mixed\u00a0nbsp", "tabs\tand   spaces    runs", "<|im_start|>user\nhi<|im_end|>\n", "can't won't I'm we'll",
    "URL https://example.com/a?b=c&d=e", "email a.b@c.de", "CamelCaseIdentifier snake_case_name", "x=1;y=2;z=x+y",
    "    indented\n        more\n", "ALL CAPS SHOUTING", "¿Qué? ¡Sí!", "math: ∑ x_i ≤ ∞", "\r\nwindows\r\nlines",
]
alphabet = list("abcdefghijklmnopqrstuvwxyz ABCDEFXYZ0123456789.,;:!?'\"()[]{}<>+-*/=_#@$%^&|\\~`\n\t") + ["é", "ß", "中", "ю", "😀", "  ", "\n\n", "1234", " the", "ing"]
strings = fixed + ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(300 - len(fixed))]
out = [{"text": s, "ids": tk.encode(s, add_special_tokens=False).ids} for s in strings]
with open(os.path.join(here, "gguf_tokenizer_ref.json"), "w") as fh:
    json.dump(out, fh, ensure_ascii=False, indent=0)
print(len(out), "strings;", sum(len(o["ids"]) for o in out), "tokens")
