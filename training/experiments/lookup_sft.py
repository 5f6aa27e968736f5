"""Experiment: continue stage 3 from models/plm-tiny's stage-3 checkpoint with question-specific data: QA types
weighted toward the lookups the model gets wrong (colour-of-shape 3, position 3, count 2, shape 1, left_of 1)
and count questions drawn uniformly over their answer values (so "1." stops being the safe answer); captions
stay at 25%. Fresh train seeds 7,200,000+.

    reference/.venv/bin/python training/experiments/lookup_sft.py 600 5e-4 /tmp/plm-lookup
    reference/.venv/bin/python training/eval.py --model /tmp/plm-lookup --out training/experiments/eval_lookup_sft.json
"""
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[1] / "reference"))
import train as T  # noqa: E402
import torch  # noqa: E402

D = T.D
T.LOG = HERE / "lookup_sft.log"
STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 600
LR = float(sys.argv[2]) if len(sys.argv) > 2 else 5e-4
OUT = Path(sys.argv[3]) if len(sys.argv) > 3 else Path("/tmp/plm-lookup")
WEIGHTS = {"colour": 3, "position": 3, "count": 2, "shape": 1, "left_of": 1}


def sample(seed: int, caption_prob: float):
    scene = D.make_scene(seed)
    rng = random.Random(seed * 7919 + 17)
    if rng.random() < caption_prob:
        return scene, D.CAPTION_PROMPT, D.caption(scene), "caption"
    qa = D.questions(scene, rng)
    types = sorted({x["type"] for x in qa})
    t = rng.choices(types, weights=[WEIGHTS[x] for x in types])[0]
    items = [x for x in qa if x["type"] == t]
    if t == "count":  # uniform over the answer values present among this scene's count questions
        answers = sorted({x["a"] for x in items})
        a = rng.choice(answers)
        items = [x for x in items if x["a"] == a]
    item = rng.choice(items)
    return scene, item["q"], item["a"], item["type"]


D.sample_training_pair = sample
torch.manual_seed(T.SEED)
tok = T.build_processor(4).tokenizer
used = T.used_vocab(tok)
model, small = T.build(used)
T.load_stage(model, small, T.CKPT / "stage3.pt")
T.STAGES[9] = dict(T.STAGES[3])
T.STAGES[9].update(steps=STEPS, lr=LR, warmup=50, seed_base=7_200_000)  # fresh train seeds
T.log(f"lookup SFT: steps {STEPS} lr {LR} weights {WEIGHTS}")
t0 = time.time()
T.run_stage(9, model, small, tok, 0)
T.log(f"lookup SFT done {time.time() - t0:.0f}s")
T.export(model, small, used, OUT)
print("exported", OUT, T.C.dir_size(OUT) / 1e6, "MB")
