"""PyTorch + PEFT's side of `bun run bench vs-torch`: the training step of `bench_train`'s shapes
(crates/core/examples/bench_train.rs), timed the same way: a random-init Llama of that shape,
AdamW (f32), random token batches; full fine-tuning, or LoRA r=16, alpha=32, dropout 0.05 on
every linear module of the blocks (PEFT's "all-linear"); one warm-up step, then STEPS timed
steps, their median. Prints JSON: seconds per step, tokens/s and the versions (peak RSS is
taken by the runner from the OS, the same way for both sides). One process per measurement; the runner interleaves it with loralab's.

    python scripts/bench_vs_torch.py SHAPE(1|2) full|lora STEPS THREADS
"""
import json, statistics, sys, time

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

shape, method, steps, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
torch.manual_seed(0)
# (vocab, hidden, intermediate, layers, heads, kv heads), batch, seq: bench_train.rs's shapes
(v, d, f, l, nh, kv), batch, seq = {
    "1": ((4096, 512, 1024, 8, 8, 2), 8, 256),
    "2": ((32000, 768, 1792, 12, 12, 12), 1, 128),
}[shape]
cfg = LlamaConfig(
    vocab_size=v,
    hidden_size=d,
    intermediate_size=f,
    num_hidden_layers=l,
    num_attention_heads=nh,
    num_key_value_heads=kv,
    tie_word_embeddings=True,
    max_position_embeddings=max(2048, seq),
    attn_implementation="sdpa",
)
model = LlamaForCausalLM(cfg).float()
peft_version = ""
if method == "lora":
    import peft
    from peft import LoraConfig, get_peft_model

    peft_version = peft.__version__
    model = get_peft_model(
        model,
        LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.05,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        ),
    )
model.train()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
gen = torch.Generator().manual_seed(1)
times = []
for i in range(steps + 1):
    ids = torch.randint(0, v, (batch, seq), generator=gen)
    t = time.perf_counter()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    dt = time.perf_counter() - t
    if i > 0:
        times.append(dt)
s = statistics.median(times)
print(
    json.dumps(
        {
            "shape": shape,
            "method": method,
            "s_per_step": s,
            "tokens_per_s": batch * seq / s,
            "loss": float(loss.detach()),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft_version,
            "threads": torch.get_num_threads(),
        }
    )
)
