"""The PEFT round trip, in real PEFT: an adapter loralab wrote, loaded by Hugging Face PEFT onto
its base and merged there, must give the same weights as `loralab merge` of the same pair.
Needs torch, transformers, peft and safetensors (not in CI: torch from PyPI is gigabytes).

    bun run loralab merge BASE ADAPTER /tmp/merged-by-loralab
    python3 scripts/peft_roundtrip.py BASE ADAPTER /tmp/merged-by-loralab

BASE is a Hugging Face model directory (for a random-init run: runs/<id>/base). Exit 0 when
every merged tensor agrees to 1e-5.
"""
import sys, warnings

warnings.filterwarnings("ignore")

try:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM
except ImportError as e:  # say so plainly: this check needs the real libraries
    sys.exit(f"peft_roundtrip: {e.name} is not installed (pip install torch transformers peft safetensors)")

base, adapter, ours = sys.argv[1:4]
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
merged = PeftModel.from_pretrained(model, adapter).merge_and_unload().state_dict()
mine = load_file(f"{ours}/model.safetensors")
worst, name, missing = 0.0, "", []
for key, t in mine.items():
    if key not in merged:
        missing.append(key)
        continue
    d = (merged[key].float() - t.float()).abs().max().item()
    if d > worst:
        worst, name = d, key
print(f"{len(mine)} tensors; max abs difference {worst:.3e} ({name}); missing in PEFT's model: {missing or 'none'}")
sys.exit(0 if worst <= 1e-5 and not missing else 1)
