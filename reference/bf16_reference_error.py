"""How far torch's own bf16 path lands from each fixture's float32 golden logits.

The engine's bf16-activation paths (the CUDA backend) are held to a bound relative to this number: a
random-weight fixture that amplifies rounding (untied_mha_hd24: 3 layers at hidden 48) moves further in
bf16 in transformers too. Writes <fixture>/bf16_reference.json with the same measure plm_cuda_test uses:
max |logits_bf16 - golden| over the golden's logits_rows, divided by max(1, max |golden|).

    reference/.venv/bin/python reference/bf16_reference_error.py test/fixtures/text/* test/fixtures/vision/*
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import common as C  # noqa: F401  (installs the torchvision shim before transformers/timm load)
import torch
from safetensors.torch import load_file


def logits_error(model, gold: dict, dtype: torch.dtype) -> float:
    model = model.to(dtype)
    kw = {"input_ids": gold["input_ids"].reshape(1, -1).long()}
    for key in ("pixel_values", "pixel_values_videos"):  # stored [tiles or frames, 3, S, S]; batch of 1
        if key in gold:
            kw[key] = gold[key].unsqueeze(0).to(dtype)
    with torch.no_grad():
        out = model(**kw).logits[0].float()
    ref = gold["logits"].float()
    got = out[gold["logits_rows"].long()]
    return (got - ref).abs().max().item() / max(1.0, ref.abs().max().item())


def main(dirs: list[str]) -> None:
    for d in map(Path, dirs):
        gold = load_file(str(d / "golden.safetensors"))
        model = C.load_model(d)
        f32 = logits_error(model, gold, torch.float32)
        assert f32 < 1e-4, f"{d}: float32 rerun is {f32:.3g} from the golden; the fixture is stale"
        bf16 = logits_error(model, gold, torch.bfloat16)
        rec = {"measure": "max|logits - golden| over logits_rows / max(1, max|golden|)",
               "torch_bf16": round(bf16, 6), "torch_f32": f32,
               "torch_version": torch.__version__,
               "transformers_version": __import__("transformers").__version__}
        (d / "bf16_reference.json").write_text(json.dumps(rec, indent=1) + "\n")
        print(f"{d.name:<44} torch bf16 {bf16:.4f}  f32 {f32:.2e}")


if __name__ == "__main__":
    main(sys.argv[1:])
