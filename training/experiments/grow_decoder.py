"""Experiment (not adopted): grow the stage-3 decoder from 4 to 8 layers, the new layers starting as identity
(o_proj and down_proj zero), and continue stage-3 SFT on fresh train seeds (7,100,000+).

    reference/.venv/bin/python training/experiments/grow_decoder.py 600 1e-3 /tmp/plm-grow600
    reference/.venv/bin/python training/eval.py --model /tmp/plm-grow600 --out training/experiments/eval_grow_decoder.json
"""
import sys, time
from pathlib import Path
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent)); sys.path.insert(0, str(HERE.parents[1] / "reference"))
import train as T
import torch
T.LOG = HERE / "grow_decoder.log"
STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 500
LR = float(sys.argv[2]) if len(sys.argv) > 2 else 1e-3
OUT = Path(sys.argv[3]) if len(sys.argv) > 3 else Path("/tmp/plm-grow")
NEW_LAYERS = 8
orig_cfg = T.model_cfg
def cfg8():
    c = orig_cfg(); c.text_config.num_hidden_layers = NEW_LAYERS
    if hasattr(c.text_config, "layer_types") and c.text_config.layer_types: c.text_config.layer_types = ["full_attention"] * NEW_LAYERS
    return c
T.model_cfg = cfg8


def spread_layers(name: str) -> str:
    """Old decoder layer i becomes layer 2i; the odd layers are the new ones."""
    if ".language_model.layers." not in name:
        return name
    pre, rest = name.split(".language_model.layers.")
    i, tail = rest.split(".", 1)
    return f"{pre}.language_model.layers.{2 * int(i)}.{tail}"


torch.manual_seed(T.SEED)
tok = T.build_processor(4).tokenizer
used = T.used_vocab(tok)
model, small = T.build(used)
missing, unexpected = T.load_stage(model, small, T.CKPT / "stage3.pt", rename=spread_layers)
assert not unexpected, unexpected
with torch.no_grad():
    for i in range(1, NEW_LAYERS, 2):
        L = model.model.language_model.layers[i]
        L.self_attn.o_proj.weight.zero_(); L.mlp.down_proj.weight.zero_()
T.STAGES[9] = dict(T.STAGES[3])
# fresh data: stage-3-like batches from seeds 7,100,000+ (train range, below the 9,000,000 test seeds)
T.STAGES[9].update(steps=STEPS, lr=LR, warmup=50, seed_base=7_100_000)
T.log(f"grow: {NEW_LAYERS} layers, steps {STEPS} lr {LR}; missing {len(missing)}")
t0 = time.time()
T.run_stage(9, model, small, tok, 0)
T.log(f"grow done {time.time()-t0:.0f}s")
T.export(model, small, used, OUT)
print("exported", OUT, T.C.dir_size(OUT) / 1e6, "MB")
