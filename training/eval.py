"""Evaluate a trained tiny PerceptionLM on the held-out synthetic test set (seeds TEST_BASE...,
never used in training): caption attribute accuracy and QA accuracy by question type.

Greedy decoding with transformers' generate (do_sample=False), inputs from the checkpoint's own
PerceptionLMProcessor + chat template (exactly the inference path). Items that share a prompt are
batched together (same length, so no padding is involved).

    reference/.venv/bin/python training/eval.py --model models/plm-tiny --n 500 [--device cuda]
"""
from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "reference"))
sys.path.insert(0, str(HERE))

import os  # noqa: E402

if os.environ.get("PLM_REAL_TORCHVISION") == "1":  # a working torchvision (e.g. a CUDA machine): load it
    import torchvision  # noqa: F401,E402  before common.py's shim, which then stands aside
import common as C  # noqa: E402
import torch  # noqa: E402

import make_data as D  # noqa: E402

OBJ_RE = re.compile(r"an? (\w+) (\w+) (?:at the ([a-z ]+?)|in the (center))(?=,| and|\.|$)")


def parse_caption(text: str):
    objs = []
    for m in OBJ_RE.finditer(text):
        objs.append((m.group(1), m.group(2), m.group(3) or m.group(4)))
    count = None
    m = re.match(r"(\w+) objects?:", text)
    if m and m.group(1).lower() in D.NUM_WORDS:
        count = D.NUM_WORDS.index(m.group(1).lower())
    return count, objs


def eval_items(scene: dict, n_per_type: int = 1):
    """The QA items evaluated for one test image: up to n per question type, chosen by the seed."""
    rng = random.Random(scene["seed"])
    # same question distribution as training: counts of absent colours/shapes are asked 15% of the time
    qa = D.questions(scene, rng)
    items = []
    by_type = defaultdict(list)
    for x in qa:
        by_type[x["type"]].append(x)
    for t in sorted(by_type):
        for x in rng.sample(by_type[t], min(n_per_type, len(by_type[t]))):
            items.append(x)
    return items


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(C.REPO / "models" / "plm-tiny"))
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--out", default=str(HERE / "eval_results.json"))
    a = ap.parse_args()
    from transformers import PerceptionLMForConditionalGeneration, PerceptionLMProcessor

    dev = torch.device(a.device)
    proc = PerceptionLMProcessor.from_pretrained(a.model)
    model = PerceptionLMForConditionalGeneration.from_pretrained(a.model, dtype=torch.float32).eval().to(dev)
    tok = proc.tokenizer
    t0 = time.time()
    scenes = [D.make_scene(D.TEST_BASE + i) for i in range(a.n)]
    images = [D.render(s) for s in scenes]
    jobs = defaultdict(list)  # prompt -> [(scene index, item)]
    for i, s in enumerate(scenes):
        jobs[D.CAPTION_PROMPT].append((i, {"type": "caption", "q": D.CAPTION_PROMPT, "a": D.caption(s)}))
        for x in eval_items(s):
            jobs[x["q"]].append((i, x))
    results = []
    for q, lst in sorted(jobs.items()):
        for b in range(0, len(lst), a.batch):
            chunk = lst[b:b + a.batch]
            msgs = [[{"role": "user", "content": [{"type": "image", "image": images[i]}, {"type": "text", "text": q}]}]
                    for i, _ in chunk]
            inputs = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True,
                                              return_tensors="pt").to(dev)
            with torch.no_grad():
                out = model.generate(**inputs, do_sample=False, max_new_tokens=64 if q == D.CAPTION_PROMPT else 32,
                                     pad_token_id=128001)
            gen = out[:, inputs["input_ids"].shape[1]:].cpu()
            for (i, x), g in zip(chunk, gen):
                text = tok.decode(g.tolist(), skip_special_tokens=True).strip()
                results.append({"i": i, "type": x["type"], "q": q, "a": x["a"], "pred": text})
    # scoring
    acc = defaultdict(lambda: [0, 0])
    cap = defaultdict(lambda: [0, 0])
    for r in results:
        if r["type"] != "caption":
            ok = r["pred"].strip().lower() == r["a"].strip().lower()
            acc[r["type"]][0] += ok
            acc[r["type"]][1] += 1
            acc["all QA"][0] += ok
            acc["all QA"][1] += 1
            continue
        s = scenes[r["i"]]
        gt = [(o["colour"], o["shape"], D.CELL_NAMES[o["row"]][o["col"]]) for o in s["objects"]]
        cnt, pred = parse_caption(r["pred"])
        cap["exact caption"][0] += r["pred"] == r["a"]
        cap["exact caption"][1] += 1
        cap["object count"][0] += (cnt == len(gt))
        cap["object count"][1] += 1
        # attribute accuracy: each ground-truth object, matched by its position (each object has its own cell)
        by_pos = {p[2]: p for p in pred}
        for c, sh, pos in gt:
            p = by_pos.get(pos)
            cap["object position found"][0] += p is not None
            cap["colour"][0] += p is not None and p[0] == c
            cap["shape"][0] += p is not None and p[1] == sh
            cap["colour+shape+position"][0] += p is not None and p[0] == c and p[1] == sh
            for k in ("object position found", "colour", "shape", "colour+shape+position"):
                cap[k][1] += 1
        cap["no hallucinated object"][0] += all(p[2] in {g[2] for g in gt} for p in pred) and len(pred) == len(gt)
        cap["no hallucinated object"][1] += 1
    summary = {
        "n_images": a.n,
        "qa": {k: {"correct": v[0], "total": v[1], "accuracy": round(v[0] / v[1], 4)} for k, v in sorted(acc.items())},
        "caption": {k: {"correct": v[0], "total": v[1], "accuracy": round(v[0] / v[1], 4)} for k, v in cap.items()},
        "seconds": round(time.time() - t0, 1),
        "examples": [r for r in results if r["i"] < 3],
        "errors": [r for r in results if r["type"] != "caption" and r["pred"].lower() != r["a"].lower()][:40],
    }
    Path(a.out).write_text(json.dumps(summary, indent=1))
    for sec in ("qa", "caption"):
        for k, v in summary[sec].items():
            print(f"{sec:8s} {k:24s} {v['accuracy'] * 100:6.2f}%  ({v['correct']}/{v['total']})")
    print(f"eval time {summary['seconds']}s")


if __name__ == "__main__":
    main()
