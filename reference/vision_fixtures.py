"""Vision model cases: test/fixtures/vision/<case>/ (checkpoint + input image/frames + goldens)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

import common as C

TILE = 112
PATCH = 14


def scene(w: int, h: int, k: int = 0) -> Image.Image:
    """A deterministic test picture: a smooth gradient with a few solid shapes (k moves them)."""
    x = np.linspace(0.0, 1.0, w, dtype=np.float64)[None, :]
    y = np.linspace(0.0, 1.0, h, dtype=np.float64)[:, None]
    r = 40 + 170 * x + 0 * y
    g = 60 + 150 * y + 0 * x
    b = 200 - 120 * x * y
    arr = np.stack([r + 0 * y, g + 0 * x, b], -1).round().clip(0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    d = ImageDraw.Draw(img)
    s = min(w, h)
    d.ellipse((0.1 * w + 6 * k, 0.15 * h, 0.1 * w + 0.45 * s + 6 * k, 0.15 * h + 0.45 * s), fill=(230, 50, 40))
    d.rectangle((0.55 * w, 0.35 * h - 4 * k, 0.9 * w, 0.85 * h - 4 * k), fill=(30, 190, 70))
    d.polygon([(0.3 * w, 0.95 * h), (0.5 * w, 0.55 * h + 3 * k), (0.7 * w, 0.95 * h)], fill=(250, 220, 30))
    d.line((0, 0, w - 1, h - 1), fill=(255, 255, 255), width=3)
    return img


def image_processor(max_num_tiles: int):
    from transformers import PerceptionLMImageProcessorFast

    return PerceptionLMImageProcessorFast(
        tile_size=TILE, max_num_tiles=max_num_tiles, size={"height": TILE, "width": TILE},
        vision_input_type="thumb+tile", max_frame_tiles=1, do_resize=True, do_rescale=True,
        do_normalize=True, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])


def video_processor():
    from transformers import PerceptionLMVideoProcessor

    return PerceptionLMVideoProcessor(size={"height": TILE, "width": TILE})


def _vis_cfg(arch, embed, depth, heads, use_cls, text_kw, image=500, video=501, tie=True):
    def make():
        v = C.vision_config(arch, embed, depth, heads, img_size=TILE, patch=PATCH)
        t = C.text_config(**text_kw)
        return C.plm_config(v, t, use_cls, pooling=2, image_token_id=image, video_token_id=video, tie=tie)
    return make


TEXT_A = dict(vocab=512, hidden=64, layers=2, heads=4, kv_heads=2, inter=128, rope_scaling=C.llama3_scaling(), tie=True)
TEXT_B = dict(vocab=512, hidden=64, layers=2, heads=4, kv_heads=1, inter=128, rope_scaling=None, tie=False)

PER_TILE = (TILE // PATCH // 2) ** 2  # 16 pooled tokens per tile


def _ids(pre, n_media, media_id, post):
    return torch.tensor(pre + [media_id] * n_media + post, dtype=torch.long)


def _geometry(arch, use_cls, n_tiles, embed, heads, kind):
    g = TILE // PATCH
    return {
        "geometry": {
            "tile_size": TILE, "patch_size": PATCH, "grid": [g, g], "patches_per_tile": g * g,
            "vision_seq_len": g * g + (1 if use_cls else 0), "pooling_ratio": 2,
            "tokens_per_tile": PER_TILE, kind: n_tiles,
            "vision_embed_dim": embed, "vision_heads": heads, "vision_head_dim": embed // heads,
            "rope_grid_offset": 1 if use_cls else 0, "rope_grid_indexing": "xy",
            "layernorm_eps": 1e-5, "attention": "bidirectional, scale head_dim^-0.5",
        }
    }


def _arch_meta(model):
    tm = model.model.vision_tower.timm_model
    b = tm.blocks[0]
    return {
        "timm": {
            "class": type(tm).__name__, "num_prefix_tokens": int(tm.num_prefix_tokens),
            "has_cls_token": tm.cls_token is not None, "pos_embed_shape": list(tm.pos_embed.shape),
            "mlp_hidden": int(b.mlp.fc1.out_features), "norm_pre": type(tm.norm_pre).__name__,
            "final_norm": type(tm.norm).__name__, "rope_class": type(tm.rope).__name__ if tm.rope is not None else None,
            "rope_buffer_dtype": str(getattr(tm.rope, "pos_embed", torch.empty(0)).dtype),
            "attn_fused": bool(getattr(b.attn, "fused_attn", False)),
        }
    }


def generate(out_root: Path, log=print) -> dict:
    out_root = Path(out_root) / "vision"
    out_root.mkdir(parents=True, exist_ok=True)
    metas = {}

    # (a) PE-L flavour: CLS token, RoPE grid offset 1; 2x1 tiles + thumbnail = 3 tiles
    name = "pe_l_cls_2tiles"
    img = scene(200, 100)
    pv = image_processor(2)(images=[img], return_tensors="pt")["pixel_values"]  # [1, T, 3, S, S]
    nt = pv.shape[1]
    ids = _ids([1, 17, 4, 30], nt * PER_TILE, 500, [77, 301, 12, 5, 99])
    out = out_root / name
    metas[name] = C.make_model_case(
        out, _vis_cfg(C.PE_L, 64, 2, 2, True, TEXT_A), lambda cfg: ids, name=name,
        description="Tiny PLM with a PE-L style tower (vit_pe_core_large_patch14_336: CLS token, RoPE grid "
                    "offset 1, mlp ratio 4): embed 64, depth 2, 2 heads (head_dim 32), 112 px tiles (8x8 patches, "
                    "16 pooled tokens per tile). A 200x100 image through the HF image processor "
                    "(max_num_tiles 2) gives thumbnail + 2x1 tiles. Text: hidden 64, GQA 2, llama3 scaling, tied, "
                    "bf16 weights, 4.x config flavour.",
        dtype=torch.bfloat16, flavour="v4", mm_fn=lambda cfg: {"pixel_values": pv},
        scales={"embed": 0.5, "linear_gain": 2.0},
        extra_meta=lambda t, m: {**_geometry(C.PE_L, True, [nt], 64, 2, "num_tiles"), **_arch_meta(m),
                                 "image": "image.png", "image_size_wh": [200, 100],
                                 "image_processor": {"tile_size": TILE, "max_num_tiles": 2}},
        log=log)
    _finish_image_case(out, img, pv)

    # (b) PE-G flavour: no CLS, grid offset 0, mlp ratio 8960/1536; 1 tile + thumbnail
    name = "pe_g_nocls_1tile"
    img = scene(120, 150, 1)
    pv = image_processor(1)(images=[img], return_tensors="pt")["pixel_values"]
    nt = pv.shape[1]
    ids = _ids([1, 40, 8], nt * PER_TILE, 500, [260, 3 + 30, 111, 9])
    out = out_root / name
    metas[name] = C.make_model_case(
        out, _vis_cfg(C.PE_G, 96, 2, 2, False, TEXT_B, tie=False), lambda cfg: ids, name=name,
        description="Tiny PLM with a PE-G style tower (vit_pe_core_gigantic_patch14_448: no CLS token, RoPE "
                    "grid offset 0, mlp ratio 8960/1536 from the architecture default): embed 96, depth 2, "
                    "2 heads (head_dim 48), 112 px tiles. A 120x150 image with max_num_tiles 1 gives thumbnail "
                    "+ 1 tile. Text: hidden 64, GQA 4, default RoPE (as PLM-8B), untied lm_head, float32 weights, "
                    "5.x config flavour.",
        dtype=torch.float32, flavour="v5", mm_fn=lambda cfg: {"pixel_values": pv},
        scales={"embed": 1.0, "lm_head": 0.5, "linear_gain": 2.0},
        extra_meta=lambda t, m: {**_geometry(C.PE_G, False, [nt], 96, 2, "num_tiles"), **_arch_meta(m),
                                 "image": "image.png", "image_size_wh": [120, 150],
                                 "image_processor": {"tile_size": TILE, "max_num_tiles": 1}},
        log=log)
    _finish_image_case(out, img, pv)

    # (c) video: 3 frames, one tile each, <|video|> placeholders (16 per frame)
    name = "video_pe_l_3frames"
    frames = [scene(160, 120, k) for k in range(3)]
    pvv = video_processor()(videos=[np.stack([np.asarray(f) for f in frames])], return_tensors="pt",
                            do_sample_frames=False)["pixel_values_videos"]  # [1, F, 3, S, S]
    nf = pvv.shape[1]
    ids = _ids([1, 22, 6], nf * PER_TILE, 501, [88, 402, 13, 7])
    out = out_root / name
    metas[name] = C.make_model_case(
        out, _vis_cfg(C.PE_L, 64, 2, 2, True, TEXT_A), lambda cfg: ids, name=name,
        description="Video input: 3 frames (160x120, resized by the HF video processor to one 112 px tile each) "
                    "as pixel_values_videos, 16 <|video|> placeholders (id 501) per frame. Same model shape as "
                    "pe_l_cls_2tiles (different seed search), bf16, 4.x flavour.",
        dtype=torch.bfloat16, flavour="v4", mm_fn=lambda cfg: {"pixel_values_videos": pvv},
        scales={"embed": 0.5, "linear_gain": 2.0},
        extra_meta=lambda t, m: {**_geometry(C.PE_L, True, nf, 64, 2, "num_frames"), **_arch_meta(m),
                                 "frames": [f"frame{k}.png" for k in range(nf)]},
        log=log)
    for k, f in enumerate(frames):
        f.save(out / f"frame{k}.png", optimize=False)
    _add_tensors(out, {"pixel_values_videos": pvv[0]})
    return metas


def _finish_image_case(out: Path, img: Image.Image, pv: torch.Tensor):
    img.save(out / "image.png", optimize=False)
    _add_tensors(out, {"pixel_values": pv[0], "num_tiles": torch.tensor([pv.shape[1]], dtype=torch.int32)})


def _add_tensors(out: Path, extra: dict):
    import json

    from safetensors.torch import load_file

    t = load_file(str(out / "golden.safetensors"))
    t.update({k: v.contiguous() for k, v in extra.items()})
    meta = json.loads((out / "golden.json").read_text())
    del meta["tensors"]
    C.write_golden(out, t, meta)
