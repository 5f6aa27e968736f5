"""Diagnostic: how linearly decodable are shape and colour from what the decoder receives (the projector's
output tokens), per quadrant tile? A linear probe on the mean of each tile's 4 tokens (40 dims), trained on
1500 training scenes, tested on 500 held-out ones.

    reference/.venv/bin/python training/experiments/probe_tokens.py [--model models/plm-tiny]
"""
import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[1] / "reference"))
import common as C  # noqa: E402,F401
import make_data as D  # noqa: E402
import torch  # noqa: E402
from train import image_tokens  # noqa: E402


def features(model, proc, seeds):
    xs, shapes, colours = [], [], []
    for seed, fs in zip(seeds, image_tokens(model, proc, seeds, batch=50).mean(2)):  # fs: [tile, dim]
        sc = D.make_scene(seed)
        cell = {(o["row"], o["col"]): o for o in sc["objects"]}
        for r in range(2):
            for c in range(2):
                o = cell.get((r, c))
                xs.append(fs[1 + r * 2 + c])  # tile 0 is the thumbnail
                shapes.append(D.SHAPES.index(o["shape"]) + 1 if o else 0)
                colours.append(list(D.COLOURS).index(o["colour"]) + 1 if o else 0)
    return torch.stack(xs), torch.tensor(shapes), torch.tensor(colours)


def probe(xtr, ytr, xte, yte, classes):
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    lin = torch.nn.Linear(xtr.shape[1], classes)
    opt = torch.optim.Adam(lin.parameters(), lr=1e-2)
    for _ in range(500):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(lin(xtr), ytr).backward()
        opt.step()
    with torch.no_grad():
        return (lin(xte).argmax(1) == yte).float().mean().item(), (lin(xtr).argmax(1) == ytr).float().mean().item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(C.REPO / "models" / "plm-tiny"))
    a = ap.parse_args()
    from transformers import PerceptionLMForConditionalGeneration, PerceptionLMProcessor
    model = PerceptionLMForConditionalGeneration.from_pretrained(a.model, dtype=torch.float32).eval()
    proc = PerceptionLMProcessor.from_pretrained(a.model)
    xtr, str_, ctr = features(model, proc, list(range(D.TRAIN_BASE + 7_500_000, D.TRAIN_BASE + 7_501_500)))
    xte, ste, cte = features(model, proc, list(range(D.TEST_BASE + 5000, D.TEST_BASE + 5500)))
    s_te, s_tr = probe(xtr, str_, xte, ste, len(D.SHAPES) + 1)
    c_te, c_tr = probe(xtr, ctr, xte, cte, len(D.COLOURS) + 1)
    print(f"linear probe on the projector's tile tokens ({xtr.shape[1]} dims, {len(xtr)} train / {len(xte)} test tiles):")
    print(f"  shape (5 + empty):  test {s_te:.3f}  train {s_tr:.3f}")
    print(f"  colour (8 + empty): test {c_te:.3f}  train {c_tr:.3f}")


if __name__ == "__main__":
    main()
