"""Makes the bundled tiny laboratory: two small synthetic domains, a BPE tokenizer
trained on them and a small Llama config. Run once; the outputs are committed
(small, made here, deterministic). `python3 datasets/tiny/make.py`
Needs the PyPI package `tokenizers` only for the tokenizer."""
import json, random, os

here = os.path.dirname(os.path.abspath(__file__))
rng = random.Random(1234)

# --- source domain: simple English facts (what the base model "knows")
animals = "cat dog fox owl bear wolf deer frog hare duck goat mouse horse eagle otter seal".split()
colors = "red blue green brown black white grey golden".split()
places = "forest river hill meadow lake cave field garden valley shore".split()
verbs = "sleeps runs hides eats swims hunts rests sings waits plays".split()
times = "at dawn at night in winter in summer after rain before noon".split(" ")
times = ["at dawn", "at night", "in winter", "in summer", "after rain", "before noon"]

def english_doc():
    sents = []
    for _ in range(rng.randint(3, 7)):
        a, c, p, v, t = rng.choice(animals), rng.choice(colors), rng.choice(places), rng.choice(verbs), rng.choice(times)
        form = rng.randint(0, 3)
        if form == 0:
            sents.append(f"The {c} {a} {v} in the {p} {t}.")
        elif form == 1:
            sents.append(f"A {a} lives near the {p} and {v} {t}.")
        elif form == 2:
            sents.append(f"{t.capitalize()}, the {a} {v} by the {p}.")
        else:
            sents.append(f"Every {a} in the {p} is {c}.")
    return " ".join(sents)

# --- target domain: small Python functions (the "new domain" to learn)
ops = [("add", "+"), ("sub", "-"), ("mul", "*")]
names = "x y n value count total size width height index".split()

def code_doc():
    fname, op = rng.choice(ops)
    k = rng.randint(1, 9)
    a = rng.choice(names)
    form = rng.randint(0, 2)
    if form == 0:
        return f"def {fname}_{k}({a}):\n    return {a} {op} {k}\n"
    if form == 1:
        return f"def {fname}_all_{k}(items):\n    out = []\n    for {a} in items:\n        out.append({a} {op} {k})\n    return out\n"
    return f"def is_big_{k}({a}):\n    if {a} > {k}:\n        return True\n    return False\n"

def code_ift():
    fname, op = rng.choice(ops)
    k = rng.randint(1, 9)
    a = rng.choice(names)
    word = {"add": "adds", "sub": "subtracts", "mul": "multiplies by"}[fname]
    prompt = f"Write a function {fname}_{k} that {word} {k} {'to' if fname == 'add' else ('from' if fname == 'sub' else '')} {a}.".replace("  ", " ")
    return {"prompt": prompt, "response": f"def {fname}_{k}({a}):\n    return {a} {op} {k}\n"}

def write(name, rows):
    with open(os.path.join(here, name), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")

english = [{"text": english_doc()} for _ in range(1200)]
code = [{"content": code_doc()} for _ in range(1500)]
write("english.jsonl", english[:1000])
write("english_heldout.jsonl", english[1000:])
write("code.jsonl", code[:1300])
write("code_heldout.jsonl", code[1300:])
write("code_ift.jsonl", [code_ift() for _ in range(600)])

from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers, processors
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<s>", "</s>", "<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
tok.train_from_iterator([r["text"] for r in english] + [r["content"] for r in code], trainer)
tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
tok.save(os.path.join(here, "tokenizer.json"))

config = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "vocab_size": tok.get_vocab_size(), "hidden_size": 128, "intermediate_size": 352,
    "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 512,
    "tie_word_embeddings": True, "initializer_range": 0.02,
    "bos_token_id": tok.token_to_id("<s>"), "eos_token_id": tok.token_to_id("</s>"), "hidden_act": "silu",
}
with open(os.path.join(here, "config.json"), "w") as f:
    json.dump(config, f, indent=2)
print("vocab", tok.get_vocab_size())

# --- the base model's pretraining mix: the English source domain with a little code, as a
# real base model has seen some code; without it LoRA (which never adapts embeddings or
# lm_head) could not learn to emit code tokens at all. Drawn after everything above, so the
# files above and the tokenizer are unchanged by it.
mix = [{"text": r["text"]} for r in english[:1000]] + [{"text": code_doc()} for _ in range(100)]
rng.shuffle(mix)
write("pretrain_mix.jsonl", mix)
