"""Experiment: stages 2-3 of the recipe again from the stage-1 checkpoint, with 4 key/value heads instead of 2
(the decoder's keys get 64 dims per layer instead of 32), to test whether finding an object by its shape is
limited by the key width. The stage-1 decoder is random and frozen, so only k/v start fresh.

    # stage1.pt without the decoder k_proj/v_proj (their shapes change; they start fresh from the seed):
    python -c "import torch; sd = torch.load('training/ckpt/stage1.pt'); torch.save({k: v for k, v in sd.items() if not ('language_model' in k and ('k_proj' in k or 'v_proj' in k))}, '/tmp/ckpt_kv4/stage1.pt')"
    reference/.venv/bin/python training/experiments/wider_kv.py --stage 2+ --ckpt-dir /tmp/ckpt_kv4 --export /tmp/plm-kv4
    reference/.venv/bin/python training/eval.py --model /tmp/plm-kv4 --out training/experiments/eval_wider_kv.json
"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[1] / "reference"))
import train as T  # noqa: E402

T.LOG = HERE / "wider_kv.log"
_base_cfg = T.model_cfg


def cfg_kv4():
    c = _base_cfg()
    c.text_config.num_key_value_heads = 4
    return c


T.model_cfg = cfg_kv4
if __name__ == "__main__":
    T.main()
