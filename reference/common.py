"""Shared helpers for the PerceptionLM reference tooling.

Everything here runs Hugging Face transformers on the CPU, offline. Import this module before
anything that imports timm or torchvision: it installs the torchvision operator shim.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch

# --- torchvision shim -------------------------------------------------------------------------
# The mirror's torchvision 0.28.0 is a CUDA build whose C extension does not load beside the CPU
# torch. `import torchvision` then fails while registering fake kernels for ops whose schemas the
# extension would have defined. Defining the two schemas it needs is enough; PLM calls no
# torchvision op.
_TV_LIB = None


def install_torchvision_shim() -> None:
    global _TV_LIB
    if _TV_LIB is not None:
        return
    try:
        torch.ops.torchvision.nms  # noqa: B018 - already defined (a working torchvision)
        _TV_LIB = False
        return
    except (AttributeError, RuntimeError):
        pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _TV_LIB = lib


install_torchvision_shim()
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
torch.use_deterministic_algorithms(True, warn_only=True)

import numpy as np  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
LLAMA3_TOKENIZER_JSON = REPO / "node_modules" / "@lenml" / "tokenizer-llama3" / "models" / "tokenizer.json"

DEFAULT_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content "
    "that the user provides, and assist the user with a variety of tasks using natural language."
)

# The PLM chat template, character for character as the released checkpoints carry it (it is the
# string that transformers' PerceptionLM conversion writes). Behaviour: the CHAT_TEMPLATE of transformers' convert_perception_lm_weights_to_hf.py.
PLM_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "    {%- set system_message = messages[0]['content']|trim %}\n"
    "    {%- set messages = messages[1:] %}\n"
    "{%- else %}"
    "    {%- set system_message = '" + DEFAULT_SYSTEM + "' %}"
    "{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- system_message }}"
    "{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<|image|>' }}"
    "{%- endfor %}"
    "{%- for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<|video|>' }}"
    "{%- endfor %}"
    "{%- for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{- content['text'] | trim }}"
    "{%- endfor %}"
    "{{'<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)

# PLM's names for the 256 special tokens (ids 128000..128255).
PLM_SPECIAL_TOKENS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|image|>", "<|video|>",
    "<|reserved_special_token_2|>", "<|reserved_special_token_3|>",
    "<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>",
] + [f"<|reserved_special_token_{i}|>" for i in range(5, 251)]

PE_L = "vit_pe_core_large_patch14_336"
PE_G = "vit_pe_core_gigantic_patch14_448"


# --- configs ------------------------------------------------------------------------------------
def vision_config(arch: str, embed_dim: int, depth: int, num_heads: int, img_size: int = 112,
                  patch: int = 14, init_values: float = 0.1, extra: dict | None = None):
    from transformers import TimmWrapperConfig

    g = img_size // patch
    model_args = {
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": num_heads,
        "img_size": (img_size, img_size),
        "global_pool": "",
        "use_post_transformer_norm": False,
        "init_values": init_values,
        "ref_feat_shape": (g, g),
    }
    if extra:
        model_args.update(extra)
    return TimmWrapperConfig(architecture=arch, model_args=model_args, do_pooling=True,
                             global_pool="map", num_labels=0)


def text_config(vocab: int, hidden: int, layers: int, heads: int, kv_heads: int, inter: int,
                head_dim: int | None = None, rope_theta: float = 500000.0, rope_scaling: dict | None = None,
                tie: bool = True, bos: int = 1, eos=(2, 3), max_pos: int = 11520, eps: float = 1e-5):
    from transformers import LlamaConfig

    rope = {"rope_type": "default", "rope_theta": rope_theta}
    if rope_scaling:
        rope = dict(rope_scaling)
        rope["rope_theta"] = rope_theta
    kw = dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
              num_key_value_heads=kv_heads, intermediate_size=inter, rms_norm_eps=eps,
              max_position_embeddings=max_pos, bos_token_id=bos, eos_token_id=list(eos),
              tie_word_embeddings=tie, rope_parameters=rope)
    if head_dim is not None:
        kw["head_dim"] = head_dim
    return LlamaConfig(**kw)


def llama3_scaling(factor=32.0, low=1.0, high=4.0, original=8192):
    return {"rope_type": "llama3", "factor": float(factor), "low_freq_factor": float(low),
            "high_freq_factor": float(high), "original_max_position_embeddings": int(original)}


def plm_config(vcfg, tcfg, use_cls: bool, pooling: int = 2, image_token_id: int = 128002,
               video_token_id: int = 128003, tie: bool = True):
    from transformers import PerceptionLMConfig

    cfg = PerceptionLMConfig(vision_config=vcfg, text_config=tcfg, vision_use_cls_token=use_cls,
                             projector_pooling_ratio=pooling, image_token_id=image_token_id,
                             video_token_id=video_token_id, tie_word_embeddings=tie)
    return cfg


# --- deterministic init -------------------------------------------------------------------------
def _stable_seed(seed: int, name: str) -> int:
    h = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(h[:8], "little") & 0x7FFFFFFFFFFFFFFF


def init_weights(model, seed: int, scales: dict | None = None) -> None:
    """Overwrite every parameter with values drawn from a generator seeded by (seed, name).

    The result depends only on the seed, the names and the shapes, never on module creation order
    or on the global RNG. `scales` overrides the std of a few groups (see defaults below).
    """
    s = {"embed": 1.0, "lm_head": 0.5, "linear_gain": 1.0, "norm_jitter": 0.1, "bias": 0.02,
         "gamma": (0.1, 0.05), "pos": 0.1, "cls": 0.5, "patch": None}
    if scales:
        s.update(scales)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(remove_duplicate=True), key=lambda kv: kv[0]):
            g = torch.Generator().manual_seed(_stable_seed(seed, name))
            shape = p.shape
            r = torch.randn(shape, generator=g, dtype=torch.float32)
            leaf = name.rsplit(".", 1)[-1]
            if "embed_tokens" in name:
                v = r * s["embed"]
            elif name.startswith("lm_head"):
                v = r * s["lm_head"]
            elif leaf in ("gamma_1", "gamma_2"):
                mu, sd = s["gamma"]
                v = mu + sd * r
            elif leaf == "pos_embed":
                v = r * s["pos"]
            elif leaf == "cls_token":
                v = r * s["cls"]
            elif "norm" in name and leaf == "weight" and p.dim() == 1:
                v = 1.0 + s["norm_jitter"] * r
            elif leaf == "bias":
                v = r * s["bias"]
            elif p.dim() >= 2:
                fan_in = int(np.prod(shape[1:]))
                v = r * (s["linear_gain"] / fan_in ** 0.5)
            else:
                v = r * 0.02
            p.copy_(v.to(p.dtype))


def set_eager_vision(model) -> None:
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False


# --- model creation, saving, loading --------------------------------------------------------------
def build_model(cfg, seed: int, scales: dict | None = None):
    from transformers import PerceptionLMForConditionalGeneration

    torch.manual_seed(seed)
    model = PerceptionLMForConditionalGeneration(cfg).float().eval()
    init_weights(model, seed, scales)
    if getattr(cfg, "tie_word_embeddings", False) or cfg.text_config.tie_word_embeddings:
        model.tie_weights()
    return model


def save_model(model, out_dir: Path, dtype: torch.dtype, max_shard_size=None) -> None:
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    m = model.to(dtype)
    kw = {}
    if max_shard_size is not None:
        kw["max_shard_size"] = max_shard_size
    m.save_pretrained(out_dir, **kw)
    model.float()
    for name in ("config.json", "generation_config.json"):
        p = out_dir / name
        if p.exists():
            d = json.loads(p.read_text())
            d.pop("_name_or_path", None)
            write_json(p, d)


def load_model(path: Path):
    from transformers import PerceptionLMForConditionalGeneration

    m = PerceptionLMForConditionalGeneration.from_pretrained(
        str(path), dtype=torch.float32, attn_implementation="eager").eval()
    set_eager_vision(m)
    return m


def to_v4_config(path: Path) -> None:
    """Rewrite a transformers-5 config.json in the flavour transformers 4.5x wrote (and the released
    PLM checkpoints carry): text_config.rope_theta + text_config.rope_scaling, torch_dtype, and
    tie_word_embeddings inside text_config."""
    p = Path(path) / "config.json"
    d = json.loads(p.read_text())
    tc = d["text_config"]
    rp = tc.pop("rope_parameters", None) or {}
    rp = dict(rp)
    tc["rope_theta"] = float(rp.pop("rope_theta", 10000.0))
    if rp.get("rope_type", "default") == "default":
        tc["rope_scaling"] = None
    else:
        tc["rope_scaling"] = {k: rp[k] for k in sorted(rp)}
    for holder in (d, tc, d.get("vision_config", {})):
        if "dtype" in holder:
            holder["torch_dtype"] = holder.pop("dtype")
    if "tie_word_embeddings" in d:
        tc["tie_word_embeddings"] = d["tie_word_embeddings"]
    d["transformers_version"] = "4.54.0.dev0"
    write_json(p, d)


# --- capture -------------------------------------------------------------------------------------
class Capture:
    """Forward hooks that record intermediates of one forward pass (batch 1 squeezed)."""

    def __init__(self, model):
        self.model = model
        self.out: dict[str, torch.Tensor] = {}
        self.handles = []
        self.enabled = True
        inner = model.model
        lm = inner.language_model
        self._hook_pre(lm.layers[0], "hidden.embed")
        for i, layer in enumerate(lm.layers):
            self._hook(layer, f"hidden.layers.{i}")
        self._hook(lm.norm, "hidden.norm")
        vt = getattr(inner, "vision_tower", None)
        if vt is not None:
            tm = vt.timm_model
            self._hook_pre(tm.norm_pre, "vision.embed", squeeze=False)
            self._hook(tm.norm_pre, "vision.norm_pre", squeeze=False)
            for i, b in enumerate(tm.blocks):
                self._hook(b, f"vision.blocks.{i}", squeeze=False)
            pj = inner.multi_modal_projector
            self._hook(pj.linear_1, "projector.linear_1", squeeze=False)
            self._hook(pj.linear_2, "projector.linear_2", squeeze=False)
            self._hook(pj, "projector.out", squeeze=False, flatten=True)

    def _store(self, key, t, squeeze, flatten=False):
        if not self.enabled:
            return
        t = t.detach().float().clone()
        if flatten:
            t = t.reshape(-1, t.shape[-1])
        elif key.startswith("projector.linear"):
            t = t.transpose(0, 1).contiguous()  # the projector runs its MLP in LND layout
        elif squeeze and t.dim() == 3 and t.shape[0] == 1:
            t = t[0]
        if key in self.out:  # image and video both run the tower: concatenate in call order
            self.out[key] = torch.cat([self.out[key], t], 0)
        else:
            self.out[key] = t

    def _hook(self, mod, key, squeeze=True, flatten=False):
        def fn(_m, _a, o):
            t = o[0] if isinstance(o, (tuple, list)) else o
            self._store(key, t, squeeze, flatten)
        self.handles.append(mod.register_forward_hook(fn))

    def _hook_pre(self, mod, key, squeeze=True):
        def fn(_m, args, kwargs):
            t = args[0] if args else kwargs.get("hidden_states")
            self._store(key, t, squeeze)
        self.handles.append(mod.register_forward_pre_hook(fn, with_kwargs=True))

    def remove(self):
        for h in self.handles:
            h.remove()


def margin(logits_row: torch.Tensor) -> float:
    top = torch.topk(logits_row.float(), 2).values
    return float(top[0] - top[1])


@torch.no_grad()
def run_case(model, input_ids: torch.Tensor, n_new: int, mm: dict | None = None,
             logits_rows=None):
    """Prefill with hooks, then greedy decode through the KV cache.

    Returns (tensors, info). `mm` holds pixel_values / pixel_values_videos for the prefill only.
    """
    mm = mm or {}
    ids = input_ids.view(1, -1)
    cap = Capture(model)
    out = model(input_ids=ids, use_cache=True, **mm)
    cap.enabled = False
    cap.remove()
    T = ids.shape[1]
    logits = out.logits[0].float()
    rows = list(range(T)) if logits_rows is None else [r % T for r in logits_rows]
    past = out.past_key_values
    step_logits = [logits[-1]]
    gen = []
    for step in range(n_new):
        nxt = int(torch.argmax(step_logits[-1]))
        gen.append(nxt)
        if step == n_new - 1:
            break
        o = model(input_ids=torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
        past = o.past_key_values
        step_logits.append(o.logits[0, -1].float())
    gl = torch.stack(step_logits)
    margins = [margin(r) for r in gl]

    # cross-check: library generate() gives the same ids
    g = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new,
                       do_sample=False, min_new_tokens=n_new, eos_token_id=None,
                       pad_token_id=int(model.config.text_config.vocab_size) - 1, **mm)
    lib_ids = g[0, T:].tolist()
    assert lib_ids == gen, f"generate() {lib_ids} != manual loop {gen}"
    # cross-check: no-cache full forward of the whole sequence gives the same step logits
    full = model(input_ids=torch.tensor([ids[0].tolist() + gen[:-1]]), use_cache=False, **mm).logits[0, T - 1:]
    nocache_diff = float((full.float() - gl).abs().max())

    t = dict(cap.out)
    t["input_ids"] = ids[0].to(torch.int32)
    t["logits"] = logits[rows]
    t["logits_rows"] = torch.tensor(rows, dtype=torch.int32)
    t["greedy.ids"] = torch.tensor(gen, dtype=torch.int32)
    t["greedy.logits"] = gl
    info = {"min_margin": round(min(margins), 6), "margins": [round(m, 6) for m in margins],
            "greedy_ids": gen, "cache_vs_nocache_max_abs": nocache_diff, "prompt_len": T}
    return t, info


def check_greedy_quality(info, min_margin=0.1, max_repeat=2):
    ids = info["greedy_ids"]
    if info["min_margin"] < min_margin:
        return False
    run = 1
    for a, b in zip(ids, ids[1:]):
        run = run + 1 if a == b else 1
        if run > max_repeat:
            return False
    return len(set(ids)) >= max(2, -(-3 * len(ids) // 5))


# --- writing -------------------------------------------------------------------------------------
def write_json(path: Path, obj) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def write_golden(out_dir: Path, tensors: dict, meta: dict) -> None:
    out_dir = Path(out_dir)
    clean = {}
    for k, v in tensors.items():
        v = v.detach().cpu().contiguous()
        if v.is_floating_point():
            v = v.float()
        clean[k] = v
    save_file(dict(sorted(clean.items())), str(out_dir / "golden.safetensors"), metadata={"format": "pt"})
    meta = dict(meta)
    meta["tensors"] = {k: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape)}
                       for k, v in sorted(clean.items())}
    write_json(out_dir / "golden.json", meta)


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


# --- one model case ------------------------------------------------------------------------------
def config_highlights(cfg) -> dict:
    tc = cfg.text_config
    rp = dict(getattr(tc, "rope_parameters", None) or {})
    hd = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    vc = cfg.vision_config
    ma = dict(vc.model_args or {})
    return {
        "text": {
            "vocab_size": tc.vocab_size, "hidden_size": tc.hidden_size,
            "num_hidden_layers": tc.num_hidden_layers, "num_attention_heads": tc.num_attention_heads,
            "num_key_value_heads": tc.num_key_value_heads, "gqa_ratio": tc.num_attention_heads // tc.num_key_value_heads,
            "head_dim": hd, "intermediate_size": tc.intermediate_size, "rms_norm_eps": tc.rms_norm_eps,
            "rope": rp, "tie_word_embeddings": bool(tc.tie_word_embeddings),
            "bos_token_id": tc.bos_token_id, "eos_token_id": tc.eos_token_id,
        },
        "vision": {
            "architecture": vc.architecture, "model_args": {k: (list(v) if isinstance(v, tuple) else v) for k, v in ma.items()},
        },
        "vision_use_cls_token": bool(cfg.vision_use_cls_token),
        "projector_pooling_ratio": cfg.projector_pooling_ratio,
        "image_token_id": cfg.image_token_id, "video_token_id": cfg.video_token_id,
    }


def make_model_case(out_dir: Path, make_cfg, prompt_fn, *, name: str, description: str, dtype: torch.dtype,
                    flavour: str, n_new: int = 8, seeds=range(1, 40), scales: dict | None = None,
                    logits_rows=None, mm_fn=None, max_shard_size=None, extra_meta: dict | None = None,
                    min_margin: float = 0.1, tolerance_abs: float = 1e-4, log=print):
    """Build a tiny random PLM, save it, reload it in float32, compute goldens. Seeds are tried in
    order until greedy decoding has a clear margin and does not just repeat one token."""
    out_dir = Path(out_dir)
    last = None
    for seed in seeds:
        cfg = make_cfg()
        model = build_model(cfg, seed, scales)
        save_model(model, out_dir, dtype, max_shard_size=max_shard_size)
        ids = prompt_fn(cfg)
        mm = mm_fn(cfg) if mm_fn else {}
        if flavour == "v4":
            ref = load_model(out_dir)
            with torch.no_grad():
                before = ref(input_ids=ids.view(1, -1), **mm).logits
            to_v4_config(out_dir)
        m = load_model(out_dir)
        if flavour == "v4":
            with torch.no_grad():
                after = m(input_ids=ids.view(1, -1), **mm).logits
            d = float((after - before).abs().max())
            assert d == 0.0, f"{name}: 4.x-flavour config.json loads to a different model (max diff {d})"
            tp = m.config.text_config.rope_parameters
            assert tp == ref.config.text_config.rope_parameters, (tp, ref.config.text_config.rope_parameters)
        tensors, info = run_case(m, ids, n_new, mm=mm, logits_rows=logits_rows)
        last = info
        if check_greedy_quality(info, min_margin):
            break
        log(f"  {name}: seed {seed} rejected (min_margin {info['min_margin']:.4f}, ids {info['greedy_ids']})")
    else:
        raise RuntimeError(f"{name}: no seed gave a usable greedy run; last {last}")
    assert info["min_margin"] >= min_margin
    meta = {
        "case": name,
        "description": description,
        "generator": "reference/make_fixtures.py",
        "transformers_version": __import__("transformers").__version__,
        "torch_version": torch.__version__.split("+")[0],
        "timm_version": __import__("timm").__version__,
        "compute_dtype": "float32",
        "attn_implementation": "eager (text); timm fused_attn=False (vision)",
        "weight_dtype": {torch.bfloat16: "bfloat16", torch.float32: "float32"}[dtype],
        "config_flavour": flavour,
        "sharded": max_shard_size is not None,
        "seed": seed,
        # float32 noise floor: at least 4x the library's own cache/no-cache disagreement
        "tolerance_abs": float(f"{max(tolerance_abs, 4 * info['cache_vs_nocache_max_abs']):.1g}"),
        "logits_max_abs": round(float(tensors["logits"].abs().max()), 3),
        "min_margin": info["min_margin"],
        "greedy_margins": info["margins"],
        "greedy_ids": info["greedy_ids"],
        "n_new": n_new,
        "prompt_len": info["prompt_len"],
        "input_ids": [int(x) for x in ids.tolist()],
        "cache_vs_nocache_max_abs": info["cache_vs_nocache_max_abs"],
        "config": config_highlights(m.config),
    }
    if extra_meta:
        meta.update(extra_meta(tensors, m) if callable(extra_meta) else extra_meta)
    write_golden(out_dir, tensors, meta)
    log(f"  {name}: seed {seed} min_margin {info['min_margin']:.4f} ids {info['greedy_ids']} "
        f"size {dir_size(out_dir) / 1e6:.2f} MB")
    return meta
