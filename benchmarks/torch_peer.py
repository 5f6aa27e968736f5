#!/usr/bin/env python3
"""Peer benchmark: Hugging Face transformers PerceptionLMForConditionalGeneration on torch CPU.

Same figures and same synthetic inputs as benchmarks/run.js / lib/bench.ts:
  vision tower + projector per 448 tile (batch of one tile), prefill of N text tokens (tok/s),
  decode with the KV cache (tok/s, 16-token prompt then --decode-tokens greedy steps), TTFT for a
  5-tile image prompt (5*256 image tokens + 22 text tokens: vision + prefill to the first logits).

  reference/.venv/bin/python benchmarks/torch_peer.py [--model .bench/plm-1b-random] [--dtype bf16|fp32]
      [--runs 3] [--only decode,prefill,vision,ttft] [--prefill 512] [--decode-tokens 32]
      [--ttft-tiles 5] [--threads 2] [--json OUT]
Each figure is the median of --runs runs (after one warm-up for vision).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "reference"))
import common  # noqa: E402,F401  (offline env + torchvision shim; must precede transformers/timm)
import torch  # noqa: E402
from transformers import PerceptionLMForConditionalGeneration  # noqa: E402

IMG = 128002


def prompt_ids(n: int, image_tokens: int = 0) -> torch.Tensor:
    ids = [128000] + [1000 + ((i * 7919) % 100000) for i in range(1, n)]
    for i in range(image_tokens):
        ids[2 + i] = IMG
    return torch.tensor([ids], dtype=torch.long)


def pixels(tiles: int, dtype) -> torch.Tensor:
    n = tiles * 3 * 448 * 448
    px = torch.sin(torch.arange(n, dtype=torch.float64) * 0.001).to(torch.float32)
    return px.reshape(1, tiles, 3, 448, 448).to(dtype)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / ".bench/plm-1b-random"))
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", default="decode,prefill,vision,ttft")
    ap.add_argument("--prefill", default="512")
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--ttft-tiles", default="5")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    only = a.only.split(",")

    t0 = time.perf_counter()
    model = PerceptionLMForConditionalGeneration.from_pretrained(a.model, dtype=dtype)
    model.eval()
    res = {
        "peer": f"transformers {__import__('transformers').__version__} + torch {torch.__version__}",
        "dtype": a.dtype, "threads": torch.get_num_threads(), "machine": platform.processor(),
        "cpuCapability": torch.backends.cpu.get_cpu_capability(),
        "loadMs": (time.perf_counter() - t0) * 1000,
    }

    with torch.inference_mode():
        if "decode" in only:
            tps = []
            for _ in range(a.runs):
                ids = prompt_ids(16)
                out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
                past = out.past_key_values
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                t = time.perf_counter()
                for _ in range(a.decode_tokens - 1):
                    out = model(input_ids=nxt, past_key_values=past, use_cache=True, logits_to_keep=1)
                    past = out.past_key_values
                    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                tps.append((a.decode_tokens - 1) / (time.perf_counter() - t))
            res["decodeTokPerS"] = statistics.median(tps)
            res["decodeRuns"] = tps
            print(f"decode: {res['decodeTokPerS']:.2f} tok/s (runs: {', '.join(f'{v:.2f}' for v in tps)})", flush=True)
        if "prefill" in only:
            for n in [int(x) for x in a.prefill.split(",")]:
                ids = prompt_ids(n)
                tps = []
                for _ in range(a.runs):
                    t = time.perf_counter()
                    model(input_ids=ids, use_cache=True, logits_to_keep=1)
                    tps.append(n / (time.perf_counter() - t))
                res[f"prefill{n}TokPerS"] = statistics.median(tps)
                res[f"prefill{n}Runs"] = tps
                print(f"prefill {n}: {statistics.median(tps):.1f} tok/s (runs: {', '.join(f'{v:.1f}' for v in tps)})", flush=True)
        if "vision" in only:
            px = pixels(1, dtype)
            model.model.get_image_features(pixel_values=px)  # warm-up
            ms = []
            for _ in range(a.runs):
                t = time.perf_counter()
                model.model.get_image_features(pixel_values=px)
                ms.append((time.perf_counter() - t) * 1000)
            res["visionMsPerTile"] = statistics.median(ms)
            res["visionRuns"] = ms
            print(f"vision+projector: {res['visionMsPerTile']:.0f} ms/tile (runs: {', '.join(f'{v:.0f}' for v in ms)})", flush=True)
        if "ttft" in only:
            for tiles in [int(x) for x in a.ttft_tiles.split(",")]:
                n = tiles * 256 + 22
                ids = prompt_ids(n, tiles * 256)
                px = pixels(tiles, dtype)
                ms = []
                for _ in range(a.runs):
                    t = time.perf_counter()
                    out = model(input_ids=ids, pixel_values=px, use_cache=True, logits_to_keep=1)
                    out.logits[:, -1].argmax(-1)
                    ms.append((time.perf_counter() - t) * 1000)
                res[f"ttft{tiles}TilesMs"] = statistics.median(ms)
                res[f"ttft{tiles}Runs"] = ms
                print(f"TTFT {tiles} tiles ({n} tokens): {statistics.median(ms):.0f} ms (runs: {', '.join(f'{v:.0f}' for v in ms)})", flush=True)
    res["maxRssMB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {res['maxRssMB']:.0f} MB", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
