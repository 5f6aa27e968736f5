"""Text-only model cases: test/fixtures/text/<case>/ (checkpoint + golden.safetensors + golden.json)."""
from __future__ import annotations

from pathlib import Path

import torch

import common as C

TINY_VISION = dict(arch=C.PE_L, embed_dim=32, depth=1, num_heads=2)


def _prompt(ids):
    return lambda cfg: torch.tensor(ids, dtype=torch.long)


def _cfg(vocab, hidden, layers, heads, kv, inter, *, head_dim=None, theta=500000.0, scaling=None, tie=True,
         bos=1, eos=(2, 3), image=None, video=None):
    def make():
        v = C.vision_config(**TINY_VISION)
        t = C.text_config(vocab, hidden, layers, heads, kv, inter, head_dim=head_dim, rope_theta=theta,
                          rope_scaling=scaling, tie=tie, bos=bos, eos=eos)
        return C.plm_config(v, t, True, image_token_id=image if image is not None else vocab - 4,
                            video_token_id=video if video is not None else vocab - 3, tie=tie)
    return make


CASES = {
    "tied_llama3_gqa4_hd16_bf16_v4": dict(
        description="Tied lm_head, llama3 RoPE scaling as released (factor 32, low 1, high 4, original 8192; "
                    "with head_dim 16 and theta 5e5 frequency 4 lies in the smoothed band), GQA 4 (8 heads, 2 kv), "
                    "head_dim 16 implicit, bf16 weights, config.json in the transformers 4.x flavour.",
        make=_cfg(384, 128, 2, 8, 2, 128, scaling=C.llama3_scaling()),
        prompt=[1, 17, 250, 33, 5, 99, 140, 7, 301, 64, 12],
        dtype=torch.bfloat16, flavour="v4", scales={"embed": 0.5, "linear_gain": 2.0}),
    "untied_norope_gqa3_hd32_f32_v5": dict(
        description="Untied lm_head (lm_head.weight stored), default RoPE (no scaling, theta 5e5 as PLM-8B), "
                    "GQA 3 (6 heads, 2 kv), head_dim 32, float32 weights, transformers 5.x config flavour.",
        make=_cfg(256, 192, 2, 6, 2, 64, tie=False),
        prompt=[1, 200, 22, 45, 190, 8, 77, 160, 13, 101],
        dtype=torch.float32, flavour="v5", scales={"embed": 1.0, "lm_head": 0.3, "linear_gain": 2.0}),
    "tied_llama3_gqa4_hd64_bf16_v5_sharded": dict(
        description="Tied lm_head, llama3 scaling with original_max_position_embeddings 16 (frequencies 0-2 "
                    "smoothed, the rest divided by 32, so the scaling matters at short positions), GQA 4 "
                    "(4 heads, 1 kv), head_dim 64, bf16 weights, sharded safetensors with "
                    "model.safetensors.index.json, transformers 5.x config flavour.",
        make=_cfg(384, 256, 2, 4, 1, 128, scaling=C.llama3_scaling(original=16)),
        prompt=[1, 44, 210, 3 + 5, 91, 333, 150, 2 + 60, 71, 18, 222, 5],
        dtype=torch.bfloat16, flavour="v5", max_shard_size="400KB", scales={"embed": 0.4, "linear_gain": 2.0}),
    "untied_mha_hd24_theta1e4_f32_v4": dict(
        description="Explicit head_dim 24 != hidden/heads (48/4 = 12), plain MHA (4 heads, 4 kv), default RoPE "
                    "with theta 10000 (rope_scaling null in the 4.x flavour), 3 layers, untied lm_head, "
                    "float32 weights.",
        make=_cfg(384, 48, 3, 4, 4, 64, head_dim=24, theta=10000.0, tie=False),
        prompt=[1, 9, 310, 77, 64, 5, 128, 200, 31],
        dtype=torch.float32, flavour="v4", scales={"embed": 1.0, "lm_head": 0.25, "linear_gain": 2.0}),
    "realvocab_llama3_bf16_v4": dict(
        description="Real Llama 3 vocabulary size 128256 and PLM special ids (bos 128000, eos [128001, 128009], "
                    "image 128002, video 128003), hidden 16, 2 heads / 1 kv (head_dim 8), llama3 scaling as "
                    "released, tied, bf16, 4.x config flavour. Only the last 2 prompt rows of logits are stored.",
        make=_cfg(128256, 16, 2, 2, 1, 48, scaling=C.llama3_scaling(), bos=128000, eos=(128001, 128009),
                  image=128002, video=128003),
        prompt=[128000, 128006, 882, 128007, 271, 9906, 11, 1917, 0, 128009, 128006, 78191, 128007, 271],
        dtype=torch.bfloat16, flavour="v4", n_new=4, logits_rows=[-2, -1],
        scales={"embed": 2.0, "linear_gain": 2.0}),
}


def generate(out_root: Path, log=print) -> dict:
    out_root = Path(out_root) / "text"
    out_root.mkdir(parents=True, exist_ok=True)
    metas = {}
    for name, c in CASES.items():
        metas[name] = C.make_model_case(
            out_root / name, c["make"], _prompt(c["prompt"]), name=name, description=c["description"],
            dtype=c["dtype"], flavour=c["flavour"], n_new=c.get("n_new", 8), scales=c.get("scales"),
            logits_rows=c.get("logits_rows"), max_shard_size=c.get("max_shard_size"), log=log)
    return metas
