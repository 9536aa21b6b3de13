"""Reference splits for the pre-tokenizer names loralab's GGUF reader knows (crates/core/src/io/gguf.rs
`pre_tokenizer`): each name's published regex run by the PyPI `regex` package (not the
tokenizers library), each piece then mapped to GPT-2's byte-level alphabet. Writes
gguf_pre_ref.json for crates/core/tests/gguf.rs.

    pip install regex && python3 tests/reference/gguf_pre_ref.py
"""
import json, os, random, unicodedata
import regex

here = os.path.dirname(os.path.abspath(__file__))
GPT2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
def llama_like(digits):
    return r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}" + digits + r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
def byte_level():  # GPT-2's bytes_to_unicode
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b); cs.append(256 + n); n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}
BL = byte_level()
def pieces(rx, s):
    return ["".join(BL[b] for b in m.encode()) for m in regex.findall(rx, s)]
def digits_then_gpt2(s):
    return [p for chunk in regex.split(r"(\p{N})", s) if chunk for p in pieces(GPT2, chunk)]

rng = random.Random(17)
fixed = ["", " ", "Hello, world!", "The year 2024 had 366 days.", "12345678901234567890", "3.14159", "can't WON'T I'M We'Ll",
         "def f(x):\n    return x ** 2  # square\n", "\r\nwindows\r\nlines\n\n\n", "tabs\tand   spaces    runs   ", "naïve café", "日本語のテキスト",
         "Привет, мир", "emoji 😀🚀👍🏽", "e\u0301 composed?", "  leading", "x=1;y=22;z=333", "!!!???...\n\n", "a  b   c\n d"]
alphabet = list("abcdefghijklmnopqrstuvwxyz ABCXYZ0123456789.,;:!?'\"()[]{}+-*/=_#\n\t\r") + ["é", "e\u0301", "ß", "中", "ю", "😀", "  ", "\n\n", "1234", "'s", "'LL", " the"]
strings = fixed + ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(200 - len(fixed))]
out = {
    "gpt-2": [pieces(GPT2, s) for s in strings],
    "smollm": [digits_then_gpt2(s) for s in strings],
    "llama-bpe": [pieces(llama_like("{1,3}"), s) for s in strings],
    "qwen2": [pieces(llama_like(""), unicodedata.normalize("NFC", s)) for s in strings],
}
with open(os.path.join(here, "gguf_pre_ref.json"), "w") as fh:
    json.dump({"strings": strings, "pieces": out}, fh, ensure_ascii=False, indent=0)
print(len(strings), "strings x", len(out), "names")
