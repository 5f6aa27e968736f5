"""Writes a full-size PLM-1B-shaped checkpoint with deterministic random weights in the Hugging Face
layout (bf16 safetensors shards + config + tokenizer files from the bundled tiny model), so the
benchmarks need no download.

    reference/.venv/bin/python benchmarks/make_random_checkpoint.py [--out .bench/plm-1b-random]

Shapes: PE-L/14-448 vision tower (width 1024, depth 23, 16 heads, CLS token), 2x2-pooling projector,
Llama-3.2-1B decoder (hidden 2048, 16 layers, 32 heads, 8 kv heads, intermediate 8192, tied, vocab 128256).

--shape kv-1b: the same KV cache geometry (16 layers, 32 heads of 64, 8 kv heads) with a hidden size of 256, an
intermediate size of 256 and a one-block vision tower, so long prompts prefill in seconds (benchmarks of KV
cache memory: benchmarks/sequences.js --only memory --kv-model).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "reference"))
import common as C  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / ".bench" / "plm-1b-random"))
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--shape", choices=("1b", "kv-1b"), default="1b")
    args = ap.parse_args()
    out = Path(args.out)
    t0 = time.time()
    if args.shape == "1b":
        v = C.vision_config(C.PE_L, 1024, 23, 16, img_size=448, patch=14)
        hidden, inter = 2048, 8192
    else:
        v = C.vision_config(C.PE_L, 64, 1, 4, img_size=448, patch=14)
        hidden, inter = 256, 256
    t = C.text_config(128256, hidden, 16, 32, 8, inter, head_dim=64, rope_scaling=C.llama3_scaling(), tie=True,
                      bos=128000, eos=(128001, 128009))
    cfg = C.plm_config(v, t, True, pooling=2, image_token_id=128002, video_token_id=128003, tie=True)
    from transformers import PerceptionLMForConditionalGeneration

    torch.set_default_dtype(torch.bfloat16)
    model = PerceptionLMForConditionalGeneration(cfg).eval()
    torch.set_default_dtype(torch.float32)
    g = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(remove_duplicate=True), key=lambda kv: kv[0]):
            leaf = name.rsplit(".", 1)[-1]
            r = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if "embed_tokens" in name:
                r *= 1.0
            elif leaf in ("gamma_1", "gamma_2"):
                r = 0.1 + 0.05 * r
            elif leaf == "pos_embed":
                r *= 0.1
            elif leaf == "cls_token":
                r *= 0.5
            elif "norm" in name and leaf == "weight" and p.dim() == 1:
                r = 1.0 + 0.1 * r
            elif leaf == "bias":
                r *= 0.02
            elif p.dim() >= 2:
                r *= p[0].numel() ** -0.5
            else:
                r *= 0.02
            p.copy_(r.to(p.dtype))
    model.tie_weights()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.save_pretrained(out, max_shard_size="1GB")
    tiny = ROOT / "models" / "plm-tiny-random"
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "chat_template.json",
              "generation_config.json"):
        if (tiny / f).exists():
            shutil.copy(tiny / f, out / f)
    print(f"wrote {out} in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
