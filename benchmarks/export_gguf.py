#!/usr/bin/env python3
"""Export the decoder of a PLM checkpoint (Llama 3 text model) to GGUF for the llama.cpp peer benchmark.

  reference/.venv/bin/python benchmarks/export_gguf.py [--model .bench/plm-1b-random] [--type f16|q8_0] [--out FILE]

Follows llama.cpp's convert_hf_to_gguf.py for LlamaForCausalLM:
  - q/k rows are permuted back to interleaved-pair RoPE order (the inverse of HF's conversion permute:
    per head, new row order [0, hd/2, 1, hd/2+1, ...]);
  - llama3 rope scaling is written as the `rope_freqs.weight` factors tensor (that is what llama.cpp
    reads for the llama arch);
  - a tied lm_head is omitted (llama.cpp then uses token_embd);
  - norms stay f32; F16 stores every matrix in f16; Q8_0 quantizes every matrix (token_embd too) with
    blocks of 32 (f16 scale + 32 int8), gguf.quants.quantize.
Needs the `gguf` package (0.19.0 from the local wheel mirror, installed with --no-deps).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

import gguf

ROOT = Path(__file__).resolve().parent.parent


def rope_factors(p: dict, head_dim: int) -> np.ndarray:
    base = p["rope_theta"]
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    factor, lo, hi, old = p["factor"], p["low_freq_factor"], p["high_freq_factor"], p["original_max_position_embeddings"]
    lo_wl, hi_wl = old / lo, old / hi
    out = []
    for f in freqs:
        wl = 2 * math.pi / f
        if wl < hi_wl:
            out.append(1.0)
        elif wl > lo_wl:
            out.append(factor)
        else:
            s = (old / wl - lo) / (hi - lo)
            out.append(1.0 / ((1 - s) / factor + s))
    return np.array(out, dtype=np.float32)


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / ".bench/plm-1b-random"))
    ap.add_argument("--type", default="f16", choices=["f16", "q8_0"])
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    mdir = Path(a.model)
    out = Path(a.out or mdir.parent / f"{mdir.name}-decoder-{a.type}.gguf")
    cfg = json.loads((mdir / "config.json").read_text())
    tc = cfg["text_config"]
    rp = tc.get("rope_parameters") or {**(tc.get("rope_scaling") or {}), "rope_theta": tc.get("rope_theta", 10000.0)}
    nh, nkv, hd = tc["num_attention_heads"], tc["num_key_value_heads"], tc.get("head_dim") or tc["hidden_size"] // tc["num_attention_heads"]

    # tensor name -> file
    idx = mdir / "model.safetensors.index.json"
    files = json.loads(idx.read_text())["weight_map"] if idx.exists() else None
    prefix = "model.language_model."

    def load(name: str) -> np.ndarray:
        f = files[name] if files else "model.safetensors"
        with safe_open(mdir / f, framework="pt") as h:
            return h.get_tensor(name).to(torch.float32).numpy()

    qtype = gguf.GGMLQuantizationType.F16 if a.type == "f16" else gguf.GGMLQuantizationType.Q8_0
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name(f"{mdir.name} decoder")
    w.add_context_length(tc["max_position_embeddings"])
    w.add_embedding_length(tc["hidden_size"])
    w.add_block_count(tc["num_hidden_layers"])
    w.add_feed_forward_length(tc["intermediate_size"])
    w.add_head_count(nh)
    w.add_head_count_kv(nkv)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(float(rp["rope_theta"]))
    w.add_layer_norm_rms_eps(float(tc["rms_norm_eps"]))
    w.add_vocab_size(tc["vocab_size"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if a.type == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)
    # llama3 rope scaling: only the rope_freqs.weight factors tensor (as convert_hf_to_gguf.py writes it);
    # a rope.scaling.factor key would make llama.cpp apply linear scaling on top.

    # tokenizer: Llama 3 BPE ("gpt2" model, "llama-bpe" pre-tokenizer), as convert_hf_to_gguf writes it
    tok = json.loads((mdir / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    n_vocab = tc["vocab_size"]
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [gguf.TokenType.UNUSED] * n_vocab
    for t, i in vocab.items():
        if i < n_vocab:
            tokens[i], types[i] = t, gguf.TokenType.NORMAL
    for at in tok.get("added_tokens", []):
        if at["id"] < n_vocab:
            tokens[at["id"]] = at["content"]
            types[at["id"]] = gguf.TokenType.CONTROL if at.get("special") else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tc.get("bos_token_id", 128000))
    eos = tc.get("eos_token_id", 128001)
    w.add_eos_token_id(eos[-1] if isinstance(eos, list) else eos)

    def add(name: str, arr: np.ndarray, matrix: bool) -> None:
        if not matrix:
            w.add_tensor(name, arr.astype(np.float32))
        elif qtype == gguf.GGMLQuantizationType.F16:
            w.add_tensor(name, arr.astype(np.float16))
        else:
            q = gguf.quants.quantize(arr.astype(np.float32), qtype)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qtype)

    if rp.get("rope_type") == "llama3":
        add("rope_freqs.weight", rope_factors(rp, hd), False)
    add("token_embd.weight", load(prefix + "embed_tokens.weight"), True)
    add("output_norm.weight", load(prefix + "norm.weight"), False)
    tied = cfg.get("tie_word_embeddings", tc.get("tie_word_embeddings", False))
    if not tied:
        add("output.weight", load("lm_head.weight"), True)
    for L in range(tc["num_hidden_layers"]):
        p = f"{prefix}layers.{L}."
        add(f"blk.{L}.attn_norm.weight", load(p + "input_layernorm.weight"), False)
        add(f"blk.{L}.ffn_norm.weight", load(p + "post_attention_layernorm.weight"), False)
        add(f"blk.{L}.attn_q.weight", permute(load(p + "self_attn.q_proj.weight"), nh), True)
        add(f"blk.{L}.attn_k.weight", permute(load(p + "self_attn.k_proj.weight"), nkv), True)
        add(f"blk.{L}.attn_v.weight", load(p + "self_attn.v_proj.weight"), True)
        add(f"blk.{L}.attn_output.weight", load(p + "self_attn.o_proj.weight"), True)
        add(f"blk.{L}.ffn_gate.weight", load(p + "mlp.gate_proj.weight"), True)
        add(f"blk.{L}.ffn_up.weight", load(p + "mlp.up_proj.weight"), True)
        add(f"blk.{L}.ffn_down.weight", load(p + "mlp.down_proj.weight"), True)
        print(f"layer {L} done", flush=True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {out} ({out.stat().st_size / 1e9:.2f} GB)")


if __name__ == "__main__":
    main()
