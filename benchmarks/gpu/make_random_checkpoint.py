#!/usr/bin/env python3
"""Writes a PLM-1B/3B/8B-shaped checkpoint with deterministic random bf16 weights (real dims, HF layout).

    python3 make_random_checkpoint.py --variant 1b --out /tmp/plm-1b [--device cuda] [--seed 0]

Tensors are drawn on the GPU (normal, std 0.02; norms 1; layer-scale gammas 0.1; biases std 0.02), copied
to the host shard by shard (~4 GB each) and saved with safetensors (model-0000i-of-0000n.safetensors +
model.safetensors.index.json). config.json follows the layout of the released checkpoints (transformers
4.5x flavour: text_config.rope_theta/rope_scaling, torch_dtype), generation_config.json has the Llama 3 ids.
The 1B/3B heads are tied (no lm_head.weight), the 8B head is untied. Timing-equivalent to the real models;
the outputs are meaningless text.
"""
import argparse
import json
import os
import time

import torch
from safetensors.torch import save_file

VARIANTS = {
    # text: hidden, intermediate, layers, heads, kv_heads, head_dim, tied, llama3 scaling
    # vision: arch, width, depth, heads, mlp, cls
    "1b": dict(H=2048, I=8192, L=16, nh=32, nkv=8, hd=64, tied=True, scaled=True,
               arch="vit_pe_core_large_patch14_336", C=1024, depth=23, vh=16, mlp=4096, cls=True),
    "3b": dict(H=3072, I=8192, L=28, nh=24, nkv=8, hd=128, tied=True, scaled=True,
               arch="vit_pe_core_large_patch14_336", C=1024, depth=23, vh=16, mlp=4096, cls=True),
    "8b": dict(H=4096, I=14336, L=32, nh=32, nkv=8, hd=128, tied=False, scaled=False,
               arch="vit_pe_core_gigantic_patch14_448", C=1536, depth=47, vh=16, mlp=8960, cls=False),
}
V = 128256


def tensor_specs(v):
    """(name, shape, kind) in file order. kind: w (std 0.02), one, gamma, bias."""
    H, I, hd = v["H"], v["I"], v["hd"]
    q, kv = v["nh"] * hd, v["nkv"] * hd
    p = "model.language_model."
    out = [(p + "embed_tokens.weight", (V, H), "w")]
    for l in range(v["L"]):
        b = f"{p}layers.{l}."
        out += [(b + "input_layernorm.weight", (H,), "one"),
                (b + "self_attn.q_proj.weight", (q, H), "w"),
                (b + "self_attn.k_proj.weight", (kv, H), "w"),
                (b + "self_attn.v_proj.weight", (kv, H), "w"),
                (b + "self_attn.o_proj.weight", (H, q), "w"),
                (b + "post_attention_layernorm.weight", (H,), "one"),
                (b + "mlp.gate_proj.weight", (I, H), "w"),
                (b + "mlp.up_proj.weight", (I, H), "w"),
                (b + "mlp.down_proj.weight", (H, I), "w")]
    out.append((p + "norm.weight", (H,), "one"))
    if not v["tied"]:
        out.append(("lm_head.weight", (V, H), "w"))
    C, M = v["C"], v["mlp"]
    N = 1024 + (1 if v["cls"] else 0)
    vp = "model.vision_tower.timm_model."
    if v["cls"]:
        out.append((vp + "cls_token", (1, 1, C), "w"))
    out += [(vp + "pos_embed", (1, N, C), "w"),
            (vp + "patch_embed.proj.weight", (C, 3, 14, 14), "w"),
            (vp + "norm_pre.weight", (C,), "one"), (vp + "norm_pre.bias", (C,), "bias")]
    for b in range(v["depth"]):
        bp = f"{vp}blocks.{b}."
        out += [(bp + "norm1.weight", (C,), "one"), (bp + "norm1.bias", (C,), "bias"),
                (bp + "attn.qkv.weight", (3 * C, C), "w"), (bp + "attn.qkv.bias", (3 * C,), "bias"),
                (bp + "attn.proj.weight", (C, C), "w"), (bp + "attn.proj.bias", (C,), "bias"),
                (bp + "gamma_1", (C,), "gamma"),
                (bp + "norm2.weight", (C,), "one"), (bp + "norm2.bias", (C,), "bias"),
                (bp + "mlp.fc1.weight", (M, C), "w"), (bp + "mlp.fc1.bias", (M,), "bias"),
                (bp + "mlp.fc2.weight", (C, M), "w"), (bp + "mlp.fc2.bias", (C,), "bias"),
                (bp + "gamma_2", (C,), "gamma")]
    pp = "model.multi_modal_projector."
    out += [(pp + "linear_1.weight", (H, C), "w"), (pp + "linear_1.bias", (H,), "bias"),
            (pp + "linear_2.weight", (H, H), "w"), (pp + "linear_2.bias", (H,), "bias")]
    return out


def config_json(v):
    text = {
        "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 128000, "eos_token_id": [128001, 128009],
        "head_dim": v["hd"], "hidden_act": "silu", "hidden_size": v["H"], "initializer_range": 0.02,
        "intermediate_size": v["I"], "max_position_embeddings": 11520, "mlp_bias": False, "model_type": "llama",
        "num_attention_heads": v["nh"], "num_hidden_layers": v["L"], "num_key_value_heads": v["nkv"],
        "pad_token_id": None, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "tie_word_embeddings": v["tied"],
        "use_cache": True, "vocab_size": V, "rope_theta": 500000.0,
        "rope_scaling": ({"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                          "original_max_position_embeddings": 8192, "rope_type": "llama3"} if v["scaled"] else None),
    }
    return {
        "architectures": ["PerceptionLMForConditionalGeneration"],
        "image_token_id": 128002, "model_type": "perception_lm", "projector_pooling_ratio": 2,
        "text_config": text, "tie_word_embeddings": v["tied"], "transformers_version": "4.54.0.dev0",
        "video_token_id": 128003,
        "vision_config": {
            "architecture": v["arch"], "do_pooling": True, "global_pool": "map", "initializer_range": 0.02,
            "label_names": [], "model_type": "timm_wrapper", "num_classes": 0,
            "model_args": {"depth": v["depth"], "embed_dim": v["C"], "global_pool": "", "img_size": [448, 448],
                           "init_values": 0.1, "ref_feat_shape": [32, 32], "use_post_transformer_norm": False},
        },
        "vision_use_cls_token": v["cls"], "torch_dtype": "bfloat16",
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shard-gb", type=float, default=4.0)
    a = ap.parse_args()
    v = VARIANTS[a.variant]
    os.makedirs(a.out, exist_ok=True)
    t0 = time.time()
    g = torch.Generator(device=a.device)
    g.manual_seed(a.seed)
    specs = tensor_specs(v)
    shards, cur, cur_bytes = [], {}, 0
    limit = int(a.shard_gb * (1 << 30))
    weight_map = {}
    total = 0

    def flush():
        nonlocal cur, cur_bytes
        if cur:
            shards.append(cur)
            cur, cur_bytes = {}, 0

    for name, shape, kind in specs:
        if kind == "one":
            t = torch.ones(shape, dtype=torch.bfloat16, device=a.device)
        elif kind == "gamma":
            t = torch.full(shape, 0.1, dtype=torch.bfloat16, device=a.device)
        else:
            t = (torch.randn(shape, generator=g, device=a.device, dtype=torch.float32) * 0.02).to(torch.bfloat16)
        nb = t.numel() * 2
        total += t.numel()
        if cur and cur_bytes + nb > limit:
            flush()
        cur[name] = t
        cur_bytes += nb
    flush()
    n = len(shards)
    for i, sh in enumerate(shards):
        fn = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        save_file({k: t.cpu().contiguous() for k, t in sh.items()}, os.path.join(a.out, fn), metadata={"format": "pt"})
        for k in sh:
            weight_map[k] = fn
        shards[i] = None
    with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total * 2}, "weight_map": weight_map}, f, indent=1)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(config_json(v), f, indent=2)
    with open(os.path.join(a.out, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 128000, "eos_token_id": [128001, 128009], "do_sample": False}, f, indent=2)
    print(f"wrote PLM-{a.variant.upper()} ({total / 1e9:.3f} B params, {n} shards) to {a.out} "
          f"in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
