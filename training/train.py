"""Train the bundled tiny PerceptionLM (models/plm-tiny/) on the synthetic shapes world, on the CPU,
with PLM's three-stage recipe (the PerceptionLM paper, arXiv:2504.13180):

  stage 1  projector only, captions, one 112 px image (vision_input_type "vanilla", no tiling)
  stage 2  everything unfrozen, captions + QA, tiling on (thumb+tile, max_num_tiles 2)
  stage 3  SFT: QA (+ the captioning instruction), more tiles (thumb+tile, max_num_tiles 4)
  stage 4  SFT of a deeper decoder: each decoder layer followed by a copy of itself that starts as the
           identity (4 -> 8 layers), encoder and projector frozen (their tokens computed once for a fixed
           set of scenes), count questions drawn 3x as often

The model is transformers' PerceptionLMForConditionalGeneration: a PE-L-style timm encoder (CLS token,
2D RoPE, layer scale), the 2x2-pooling projector and a Llama 3 decoder with tied embeddings over the
real 128256-token vocabulary. Prompts are rendered by PerceptionLMProcessor's chat template (the
exact inference format) and pixel values come from the same processor.

The vocabulary trick: the data only ever uses a few hundred token ids. During training the embedding
is a small table over those ids (looked up through a 128256-entry index map) and the softmax runs over
those ids plus one constant-zero "any other token" column. At save time the trained rows are written
into the full 128256 x H tied embedding; every other row is a tiny random vector (std 1e-3), so its
logit stays near 0, below the trained tokens' (the zero column trains them to beat 0 by a margin).

    nice -n 19 reference/.venv/bin/python training/train.py --stage all
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "reference"))
sys.path.insert(0, str(HERE))

import os  # noqa: E402

if os.environ.get("PLM_REAL_TORCHVISION") == "1":  # a working torchvision (e.g. a CUDA machine): load it
    import torchvision  # noqa: F401,E402  before common.py's shim, which then stands aside
import common as C  # noqa: E402  (installs the torchvision shim first)
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import bundled_model as B  # noqa: E402
import make_data as D  # noqa: E402

torch.set_num_threads(2)
torch.use_deterministic_algorithms(False)

OUT_DIR = C.REPO / "models" / "plm-tiny"
CKPT = HERE / "ckpt"
LOG = HERE / "train.log"
SEED = 7

HIDDEN = 40
# A 12-layer decoder through stages 1-3 was tried (session 6): the same counts (70.8%), worse positions (43.1%);
# growing the trained 4-layer one to 8 in stage 4 took counts to 91.4% (session 7). See training/README.md.
DECODER_LAYERS = 4  # stages 1-3; stage 4 grows the decoder to DECODER_LAYERS * (1 + GROW)
GROW = 1
VISION_LR_MULT = 0.05  # stages 2-3: the encoder's learning rate relative to the rest
TILE = 112
PATCH = int(os.environ.get("PLM_TINY_PATCH", "28"))  # a whole small object fits in one patch
GRID = TILE // PATCH  # patches per tile side
DEVICE = torch.device("cpu")
TIME_GUARD = False


def build_processor(max_num_tiles: int, input_type: str = "thumb+tile"):
    from transformers import PerceptionLMProcessor

    proc = PerceptionLMProcessor.from_pretrained(str(C.REPO / "models" / "plm-tiny-random"))
    proc.image_processor.max_num_tiles = max_num_tiles
    proc.image_processor.vision_input_type = input_type
    proc.patch_size = PATCH
    return proc

STAGES = {
    0: dict(steps=800, batch=32, lr=2e-3, warmup=20, tiles=4, train="vision", budget_s=0),
    1: dict(steps=150, batch=64, lr=2e-3, warmup=20, caption_prob=1.0, input_type="vanilla", tiles=1, train="projector", budget_s=15),
    2: dict(steps=1200, batch=64, lr=1.5e-3, warmup=100, caption_prob=0.4, input_type="thumb+tile", tiles=2, train="all", budget_s=95),
    3: dict(steps=1400, batch=64, lr=1e-3, warmup=100, caption_prob=0.25, input_type="thumb+tile", tiles=4, train="all", budget_s=135),
    # decoder-only on the frozen encoder's tokens of `scenes` scenes (seeds 8,000,000+: no other stage's)
    4: dict(steps=3000, batch=64, lr=2e-3, warmup=100, caption_prob=0.15, tiles=4, train="decoder", scenes=6000,
            seed_base=8_000_000, weights={"count": 3.0}, embedding_lr_mult=0.3, budget_s=0),
}


def model_cfg():
    v = C.vision_config(C.PE_L, 128, 4, 4, img_size=TILE, patch=PATCH, extra={"patch_size": PATCH})
    t = C.text_config(128256, HIDDEN, DECODER_LAYERS, 4, 2, 160, head_dim=16, rope_scaling=C.llama3_scaling(), tie=True,
                      bos=128000, eos=(128001, 128009))
    return C.plm_config(v, t, True, pooling=2, image_token_id=128002, video_token_id=128003, tie=True)


def log(msg: str) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    with open(LOG, "a") as f:
        f.write(line + "\n")


# --- vocabulary -------------------------------------------------------------------------------------
def all_texts():
    """Every prompt and answer string the generator can produce (enumerated, not sampled)."""
    qs, ans = {D.CAPTION_PROMPT}, set()
    for s in D.SHAPES:
        qs.add(f"What color is the {s}?")
        qs.add(f"How many {D.plural(s)} are there?")
        for c in D.COLOURS:
            qs.add(f"Where is the {c} {s}?")
            qs.add(f"What is left of the {c} {s}?")
            ans.add(f"A {c} {s}.")
        ans.add(f"A {s}.")
        for c in D.COLOURS:
            ans.add(D.colour_answer(s, c))
    for c in D.COLOURS:
        qs.add(f"What shape is the {c} object?")
        qs.add(f"How many {c} objects are there?")
        ans.add(f"{c.capitalize()}.")
    qs.add("How many objects are there?")
    for k in range(5):
        ans.add(f"{k}.")
    # list answers of the attribute counts: every item and every ending (BPE never merges across spaces)
    for c in D.COLOURS:
        for shapes in [[], *[[s] for s in D.SHAPES], *[[s, t] for s in D.SHAPES for t in D.SHAPES]]:
            ans.add(D.colour_count_answer(c, shapes))
        ans.add(D.colour_count_answer(c, list(D.SHAPES[:3])))
        ans.add(D.colour_count_answer(c, list(D.SHAPES[:4])))
    for s in D.SHAPES:
        for cols in [[], *[[c] for c in D.COLOURS], *[[c, d] for c in D.COLOURS for d in D.COLOURS]]:
            ans.add(D.shape_count_answer(s, cols))
        ans.add(D.shape_count_answer(s, list(D.COLOURS)[:3]))
        ans.add(D.shape_count_answer(s, list(D.COLOURS)[:4]))
    for row in D.CELL_NAMES:
        for n in row:
            ans.add(f"{n.capitalize()}.")
    ans.add("Nothing.")
    return sorted(qs), sorted(ans)


def used_vocab(tok):
    qs, ans = all_texts()
    ids = set(range(128000, 128010))
    # prompt side: the full rendered chat (system prompt, headers) for every question
    for q in qs:
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]
        ids.update(tok.encode(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False,
                                                      chat_template=C.PLM_CHAT_TEMPLATE),
                              add_special_tokens=False))
    # answer side: answers and captions (captions are built from a fixed set of pieces)
    pieces = list(ans)
    for n in D.NUM_WORDS[1:]:
        pieces += [f"{n.capitalize()} object: ", f"{n.capitalize()} objects: "]
    for s in D.SHAPES:
        for c in D.COLOURS:
            for row in D.CELL_NAMES:
                for cell in row:
                    a = D.article(c)
                    pieces += [f"{a} {c} {s} at the {cell}", f", {a} {c} {s} at the {cell}.", f" and {a} {c} {s} in the center.",
                               f"{a} {c} {s} in the center"]
    for p in pieces:
        ids.update(tok.encode(p, add_special_tokens=False))
    return sorted(ids)


class SmallEmbedding(nn.Module):
    """An embedding over the used ids only, addressed with full-vocabulary ids."""

    def __init__(self, used: list[int], dim: int, vocab: int, seed: int):
        super().__init__()
        index = torch.full((vocab,), -1, dtype=torch.long)
        index[torch.tensor(used)] = torch.arange(len(used))
        self.register_buffer("index", index, persistent=False)
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(len(used), dim, generator=g) * 0.15)

    def forward(self, ids):
        j = self.index[ids]
        assert bool((j >= 0).all()), "token outside the training vocabulary"
        return F.embedding(j, self.weight)


# --- optimisation ------------------------------------------------------------------------------------
def scheduled_lr(peak: float, warmup: int, step: int, frac: float) -> float:
    """Linear warmup over `warmup` steps, then cosine from `peak` down to 5% of it as `frac` goes 0 -> 1."""
    return peak * min(1.0, (step + 1) / warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))


def optimizer_step(opt, loss, params) -> None:
    """Backward, gradient norm of `params` clipped to 1, one step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()


def log_stage_step(k: int, step: int, steps: int, loss: float, acc: float, lr: float, t0: float) -> None:
    """Every 25th and the last step of stage k, in train.log's format (loss and accuracy: running averages)."""
    if step % 25 == 0 or step == steps - 1:
        log(f"stage {k} step {step}/{steps} loss {loss:.4f} tok_acc {acc:.4f} lr {lr:.2e} "
            f"elapsed {time.time() - t0:.0f}s")


def decay_groups(params, mult: float = 1.0) -> list[dict]:
    """AdamW groups: weight decay 0.05 on matrices, none on vectors; `mult` scales the stage's learning rate."""
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.05, "mult": mult},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "mult": mult}]


# --- batches -----------------------------------------------------------------------------------------
def pad_sequences(seqs: list[list[int]], labs: list[list[int]]):
    """Right-padded ids (<|end_of_text|>), attention mask and labels (-100) of token lists: [B, max len] each."""
    L = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), L), 128001, dtype=torch.long)
    lab = torch.full((len(seqs), L), -100, dtype=torch.long)
    att = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, (x, y) in enumerate(zip(seqs, labs)):
        ids[i, : len(x)] = torch.tensor(x)
        lab[i, : len(y)] = torch.tensor(y)
        att[i, : len(x)] = 1
    return ids, att, lab


class Batcher:
    def __init__(self, tok, input_type: str, tiles: int, caption_prob: float):
        self.tok = tok
        self.proc = build_processor(tiles, input_type)
        self.caption_prob = caption_prob
        self.prompt_cache: dict[str, list[int]] = {}
        dummy = D.render(D.make_scene(0))
        self.n_tiles = self.proc.image_processor(images=[dummy], return_tensors="pt")["pixel_values"].shape[1]

    def prompt_ids(self, q: str, img) -> list[int]:
        if q not in self.prompt_cache:
            msgs = [{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": q}]}]
            out = self.proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True,
                                                return_tensors="pt")
            self.prompt_cache[q] = out["input_ids"][0].tolist()
        return self.prompt_cache[q]

    def batch(self, seeds: list[int]):
        imgs, seqs, labs = [], [], []
        for s in seeds:
            scene, q, a, _ = D.sample_training_pair(s, self.caption_prob)
            img = D.render(scene)
            imgs.append(img)
            p = self.prompt_ids(q, img)
            t = self.tok.encode(a, add_special_tokens=False) + [128009]
            seqs.append(p + t)
            labs.append([-100] * len(p) + t)
        ids, att, lab = pad_sequences(seqs, labs)
        pv = self.proc.image_processor(images=imgs, return_tensors="pt")["pixel_values"]
        return ids, att, lab, pv


def patch_targets(scene: dict, n_side: int) -> tuple[list[list[int]], list[list[int]]]:
    """Per-patch (shape, colour) classes for the thumb+tile views of one scene, thumbnail first, tiles
    row-major: 0 = background, else 1 + index. A patch takes the object covering >= 25% of it."""
    import numpy as np

    lm = np.asarray(D.label_map(scene), dtype=np.int64)  # [224, 224], 1 + shape*8 + colour
    tile = D.SIZE // n_side
    views = [("thumb", lm, D.SIZE // GRID)]
    for r in range(n_side):
        for c in range(n_side):
            views.append(("tile", lm[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile], tile // GRID))
    shapes, colours = [], []
    for _, v, b in views:
        g = v.shape[0] // b
        blocks = v.reshape(g, b, g, b).transpose(0, 2, 1, 3).reshape(g * g, b * b)  # [patches, pixels]
        vals = [x for x in np.unique(v) if x]
        cover = np.stack([(blocks == x).mean(1) for x in vals], 1) if vals else np.zeros((g * g, 1))
        best = cover.argmax(1)
        lab = np.where(cover.max(1) >= 0.25, np.asarray(vals or [0])[best], 0)
        shapes.append([0 if x == 0 else 1 + (x - 1) // 8 for x in lab.tolist()])
        colours.append([0 if x == 0 else 1 + (x - 1) % 8 for x in lab.tolist()])
    return shapes, colours


class EncoderData(torch.utils.data.Dataset):
    """Stage 0 batches: processor pixel values of `batch` scenes + their per-patch targets."""

    def __init__(self):
        self.proc = None

    def __len__(self):
        return STAGES[0]["steps"]

    def __getitem__(self, step):
        st = STAGES[0]
        if self.proc is None:
            self.proc = build_processor(st["tiles"])
        seeds = [D.TRAIN_BASE + step * st["batch"] + i for i in range(st["batch"])]
        scenes = [D.make_scene(s) for s in seeds]
        pv = self.proc.image_processor(images=[D.render(sc) for sc in scenes], return_tensors="pt")["pixel_values"]
        n_side = int(round(math.sqrt(pv.shape[1] - 1)))
        tg = [patch_targets(sc, n_side) for sc in scenes]
        ys = torch.tensor([t[0] for t in tg]).flatten(0, 1)  # [B*T, GRID*GRID]
        yc = torch.tensor([t[1] for t in tg]).flatten(0, 1)
        return pv, ys, yc


def run_encoder_stage(model, workers: int):
    """Stage 0, before PLM's three stages: PLM starts from a pretrained PE encoder, so ours is pretrained
    first, on dense per-patch shape and colour classification of the same synthetic views."""
    st = STAGES[0]
    vt = model.model.vision_tower
    dim = model.config.vision_config.model_args["embed_dim"] if hasattr(model.config.vision_config, "model_args") else 128
    heads = nn.Linear(dim, 6 + 9)
    params = [p for p in vt.parameters()] + list(heads.parameters())
    for p in model.parameters():
        p.requires_grad = False
    for p in params:
        p.requires_grad = True
    opt = torch.optim.AdamW(params, lr=st["lr"], betas=(0.9, 0.98), weight_decay=0.05)
    dl = torch.utils.data.DataLoader(EncoderData(), batch_size=None, shuffle=False, num_workers=workers,
                                     prefetch_factor=4 if workers else None)
    w_shape = torch.tensor([0.2] + [1.0] * 5, device=DEVICE)
    w_colour = torch.tensor([0.2] + [1.0] * 8, device=DEVICE)
    log(f"stage 0 (encoder pretraining): {st}")
    vt.train()
    t0 = time.time()
    ema = None
    for step, (pv, ys, yc) in enumerate(dl):
        frac = step / st["steps"]
        lr = scheduled_lr(st["lr"], st["warmup"], step, frac)
        for g in opt.param_groups:
            g["lr"] = lr
        h = vt(pv.flatten(0, 1).to(DEVICE), return_dict=True).last_hidden_state[:, 1:]  # [B*T, GRID*GRID, dim]
        o = heads(h)
        # background patches outnumber object patches ~4:1; weight them down so shape is what gets learned
        ls = F.cross_entropy(o[..., :6].flatten(0, 1), ys.flatten().to(DEVICE), weight=w_shape)
        lc = F.cross_entropy(o[..., 6:].flatten(0, 1), yc.flatten().to(DEVICE), weight=w_colour)
        loss = ls + lc
        optimizer_step(opt, loss, params)
        with torch.no_grad():
            obj = ys.flatten() > 0
            acc_s = (o[..., :6].flatten(0, 1).argmax(-1).cpu()[obj] == ys.flatten()[obj]).float().mean().item()
            acc_c = (o[..., 6:].flatten(0, 1).argmax(-1).cpu()[obj] == yc.flatten()[obj]).float().mean().item()
        cur = (loss.item(), acc_s, acc_c)
        ema = cur if ema is None else tuple(0.9 * a + 0.1 * b for a, b in zip(ema, cur))
        if step % 25 == 0 or step == st["steps"] - 1:
            log(f"stage 0 step {step}/{st['steps']} loss {ema[0]:.4f} object-patch shape acc {ema[1]:.3f} "
                f"colour acc {ema[2]:.3f} lr {lr:.2e} elapsed {time.time() - t0:.0f}s")
    log(f"stage 0 done in {time.time() - t0:.0f}s")
    for p in model.parameters():
        p.requires_grad = True
    vt.eval()


class StageData(torch.utils.data.Dataset):
    """Batch number `step` of a stage; its content depends only on (stage, step)."""

    def __init__(self, k: int, tok):
        self.k, self.tok, self.bt = k, tok, None

    def __len__(self):
        return STAGES[self.k]["steps"]

    def __getitem__(self, step):
        st = STAGES[self.k]
        if self.bt is None:
            self.bt = Batcher(self.tok, st["input_type"], st["tiles"], st["caption_prob"])
        seed0 = st.get("seed_base", D.TRAIN_BASE + self.k * 2_000_000)  # seed_base: continuations on fresh seeds
        return self.bt.batch([seed0 + step * st["batch"] + i for i in range(st["batch"])])


# --- model ---------------------------------------------------------------------------------------------
def build(used):
    cfg = model_cfg()
    model = C.build_model(cfg, SEED, {"embed": 1e-3, "linear_gain": 1.0, "norm_jitter": 0.0, "bias": 0.0,
                                      "gamma": (0.1, 0.0), "pos": 0.02, "cls": 0.02})
    # Llama-style small init for the residual-stream output projections
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(("o_proj.weight", "down_proj.weight")):
                p.mul_(0.5)
    lm = model.model.language_model
    small = SmallEmbedding(used, HIDDEN, cfg.text_config.vocab_size, SEED)
    lm.embed_tokens.weight.requires_grad = False
    lm.embed_tokens_full = lm.embed_tokens
    lm.embed_tokens = small
    return model, small


def restricted_head_loss(h, lab, small):
    """Next-token cross-entropy of the decoder's hidden states h [B, L, H] against labels lab [B, L] (-100: no
    loss), over the used ids plus the constant-zero "any other token" column; and the top-1 accuracy."""
    y = lab[:, 1:]
    m = y != -100
    logits = h[:, :-1][m] @ small.weight.t()
    logits = torch.cat([logits, torch.zeros_like(logits[:, :1])], dim=1)  # "any other token" column
    tgt = small.index[y[m]]
    loss = F.cross_entropy(logits, tgt)
    acc = (logits.argmax(-1) == tgt).float().mean()
    return loss, acc


def restricted_loss(model, small, ids, att, lab, pv):
    out = model.model(input_ids=ids, attention_mask=att, pixel_values=pv, use_cache=False)
    return restricted_head_loss(out.last_hidden_state, lab, small)


def set_trainable(model, what: str):
    for n, p in model.named_parameters():
        p.requires_grad = (what == "all") or n.startswith("model.multi_modal_projector")
    return [p for p in model.parameters() if p.requires_grad]


def run_stage(k: int, model, small, tok, workers: int):
    st = STAGES[k]
    bt = Batcher(tok, st["input_type"], st["tiles"], st["caption_prob"])
    dl = torch.utils.data.DataLoader(StageData(k, tok), batch_size=None, shuffle=False, num_workers=workers,
                                     prefetch_factor=4 if workers else None, persistent_workers=False)
    params = set_trainable(model, st["train"])
    if st["train"] == "all":
        params = list({id(p): p for p in params + [small.weight]}.values())
    else:
        small.weight.requires_grad = False
    small.weight.requires_grad = st["train"] == "all"
    # The encoder learns at VISION_LR_MULT x the stage's rate: at the full rate the caption/QA loss washed
    # the stage-0 shape features out (a linear probe on the patches fell from 97% to 29%).
    vision = {id(p) for p in model.model.vision_tower.parameters()}
    groups = []
    for is_vision in (False, True):
        mult = VISION_LR_MULT if is_vision else 1.0
        mine = [p for p in params if (id(p) in vision) == is_vision]
        groups += decay_groups(mine, mult)
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=st["lr"], betas=(0.9, 0.98))
    n_train = sum(p.numel() for p in params)
    log(f"stage {k}: {st} tiles/image {bt.n_tiles} trainable params {n_train}")
    model.train()
    t0 = time.time()
    ema_l = ema_a = None
    for step, batch in enumerate(dl):
        frac = step / st["steps"]
        if TIME_GUARD:  # the schedule follows whichever runs out first, steps or the stage's time budget
            frac = min(1.0, max(frac, (time.time() - t0) / st["budget_s"]))
        lr = scheduled_lr(st["lr"], st["warmup"], step, frac)
        for g in opt.param_groups:
            g["lr"] = lr * g["mult"]
        loss, acc = restricted_loss(model, small, *[t.to(DEVICE, non_blocking=True) for t in batch])
        optimizer_step(opt, loss, params)
        ema_l = loss.item() if ema_l is None else 0.95 * ema_l + 0.05 * loss.item()
        ema_a = acc.item() if ema_a is None else 0.95 * ema_a + 0.05 * acc.item()
        if TIME_GUARD and time.time() - t0 > st["budget_s"]:
            log(f"stage {k}: wall-time guard hit at step {step + 1}/{st['steps']} ({st['budget_s']}s), stage ends early")
            break
        log_stage_step(k, step, st["steps"], ema_l, ema_a, lr, t0)
    log(f"stage {k} done in {time.time() - t0:.0f}s")
    model.eval()


def image_tokens(model, proc, seeds: list[int], batch: int = 100) -> torch.Tensor:
    """The projector's tokens for the scenes of `seeds` (pixels from `proc`): what the decoder reads in place
    of <|image|>. [len(seeds), tiles, tokens per tile, hidden] f32."""
    out = []
    for i in range(0, len(seeds), batch):
        scenes = [D.make_scene(s) for s in seeds[i:i + batch]]
        pv = proc.image_processor(images=[D.render(s) for s in scenes], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            f = model.model.get_image_features(pixel_values=pv.float().to(DEVICE))
        f = f.pooler_output if hasattr(f, "pooler_output") else f
        f = torch.as_tensor(f if not isinstance(f, (list, tuple)) else torch.cat(list(f))).float()
        out.append(f.reshape(len(scenes), pv.shape[1], -1, f.shape[-1]))
    return torch.cat(out)


def grow_decoder(model) -> None:
    """After each decoder layer, GROW copies of it whose o_proj and down_proj start at zero: the grown model
    computes what the old one did, and the new layers add capacity from there."""
    import copy

    lm = model.model.language_model
    layers = []
    for layer in lm.layers:
        layers.append(layer)
        for _ in range(GROW):
            new = copy.deepcopy(layer)
            with torch.no_grad():
                new.self_attn.o_proj.weight.zero_()
                new.mlp.down_proj.weight.zero_()
            layers.append(new)
    lm.layers = nn.ModuleList(layers)
    for i, layer in enumerate(lm.layers):
        layer.self_attn.layer_idx = i
    for cfg in {id(c): c for c in (lm.config, model.config.text_config)}.values():
        cfg.num_hidden_layers = len(layers)
        if getattr(cfg, "layer_types", None):
            cfg.layer_types = ["full_attention"] * len(layers)


def run_decoder_stage(model, small, tok) -> None:
    """Stage 4. The 4-layer decoder of stages 1-3 answers every attribute count as one (70% of count
    questions); in the decoder-only harness (experiments/answer_format.py) a decoder grown to 8 layers and
    trained with counts weighted 3x was the first change that moved counts and positions."""
    import random

    st = STAGES[4]
    proc = build_processor(st["tiles"])
    t0 = time.time()
    seeds = [st["seed_base"] + i for i in range(st["scenes"])]
    feats = image_tokens(model, proc, seeds).flatten(1, 2)  # [scenes, image tokens, H]
    bt = Batcher(tok, "thumb+tile", st["tiles"], 0.0)
    dummy = D.render(D.make_scene(0))
    grow_decoder(model)
    lm = model.model.language_model
    log(f"stage 4: {st} image tokens {tuple(feats.shape)} in {time.time() - t0:.0f}s; decoder grown to "
        f"{len(lm.layers)} layers")
    for p in model.parameters():
        p.requires_grad = False
    params = [p for n, p in lm.named_parameters() if "embed" not in n]
    for p in params + [small.weight]:
        p.requires_grad = True
    groups = decay_groups(params) + [{"params": [small.weight], "weight_decay": 0.0, "mult": st["embedding_lr_mult"]}]
    opt = torch.optim.AdamW(groups, lr=st["lr"], betas=(0.9, 0.98))
    rng = random.Random(SEED + 4)
    lm.train()
    t0 = time.time()
    ema_l = ema_a = None
    for step in range(st["steps"]):
        frac = step / st["steps"]
        lr = scheduled_lr(st["lr"], st["warmup"], step, frac)
        for g in opt.param_groups:
            g["lr"] = lr * g["mult"]
        rows, seqs, labs = [], [], []
        for _ in range(st["batch"]):
            k = rng.randrange(st["scenes"])
            _, q, ans, _ = D.sample_training_pair(seeds[k], st["caption_prob"], st["weights"], rng)
            p, t = bt.prompt_ids(q, dummy), tok.encode(ans, add_special_tokens=False) + [128009]
            rows.append(k)
            seqs.append(p + t)
            labs.append([-100] * len(p) + t)
        ids, att, lab = (t.to(DEVICE) for t in pad_sequences(seqs, labs))
        emb = small(ids)
        img = feats[torch.tensor(rows)].reshape(-1, feats.shape[-1]).to(DEVICE)
        emb = emb.masked_scatter((ids == 128002)[..., None], img.to(emb.dtype))
        h = lm(inputs_embeds=emb, attention_mask=att, use_cache=False).last_hidden_state
        loss, acc = restricted_head_loss(h, lab, small)
        optimizer_step(opt, loss, params + [small.weight])
        acc = acc.item()
        ema_l = loss.item() if ema_l is None else 0.95 * ema_l + 0.05 * loss.item()
        ema_a = acc if ema_a is None else 0.95 * ema_a + 0.05 * acc
        log_stage_step(4, step, st["steps"], ema_l, ema_a, lr, t0)
    log(f"stage 4 done in {time.time() - t0:.0f}s")
    for p in model.parameters():
        p.requires_grad = True
    model.eval()


MODEL_CARD = """# plm-tiny

A 19.0 MB PerceptionLM (transformers `PerceptionLMForConditionalGeneration`: a PE-L-style encoder with
CLS token, 2D RoPE and layer scale; PLM's projector with 2x2 pooling; a Llama 3 decoder with the real
128256-token Llama 3 tokenizer and PLM's chat template) trained by `training/train.py` in this repository on a
synthetic world of coloured shapes (circle, square, triangle, star, cross; 8 colours; one object per
quadrant of a 224x224 image). It is the default model of the `plm` CLI, so that a fresh install shows real
answers. It knows nothing outside that world: for real images use a `facebook/Perception-LM-*` checkpoint.

How it was trained and how well it does: training/README.md. Weights: bf16, Hugging Face layout.
"""


def save_stage(model, small, path: Path) -> None:
    """Writes a stage checkpoint: every weight except the full-vocabulary embedding, plus the small one."""
    sd = {n: t.detach().cpu() for n, t in model.state_dict().items() if "embed_tokens" not in n and "lm_head" not in n}
    sd["small_embedding"] = small.weight.detach().cpu()
    torch.save(sd, path)


def load_stage(model, small, path: Path, rename=None, embedding: bool = True):
    """Loads a save_stage() checkpoint into build()'s model and small embedding (the latter only with
    `embedding`); `rename` maps a saved weight name to the model's. Returns load_state_dict's
    (missing, unexpected) names."""
    sd = torch.load(path)
    emb = sd.pop("small_embedding")
    if embedding:
        small.weight.data.copy_(emb)
    if rename:
        sd = {rename(n): t for n, t in sd.items()}
    return model.load_state_dict(sd, strict=False)


def export(model, small, used, out_dir: Path):
    lm = model.model.language_model
    full = lm.embed_tokens_full
    g = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        w = torch.randn(full.weight.shape, generator=g) * 1e-3
        w[torch.tensor(used)] = small.weight.detach()
        full.weight.copy_(w)
    lm.embed_tokens = full
    del lm.embed_tokens_full
    model.tie_weights()
    assert model.lm_head.weight.data_ptr() == full.weight.data_ptr()
    proc = build_processor(STAGES[3]["tiles"])
    B_MODEL = B.MODEL_DIR
    try:
        B.MODEL_DIR = out_dir
        model.to("cpu").float()
        B._save_bundle(model, proc)
    finally:
        B.MODEL_DIR = B_MODEL
    (out_dir / "README.md").write_text(MODEL_CARD)
    write_compact_merges(out_dir / "tokenizer.json")


def write_compact_merges(path: Path) -> None:
    """Rewrites tokenizer.json's BPE merges as "a b" strings instead of ["a", "b"] pairs: the same
    tokenizer (both forms are read by tokenizers and @huggingface/tokenizers; byte-level tokens never
    contain a space), 1.1 MB smaller: room for more decoder layers within the 20 MB budget."""
    tj = json.loads(path.read_text())
    merges = tj["model"]["merges"]
    assert all(" " not in a and " " not in b for a, b in merges)
    tj["model"]["merges"] = [f"{a} {b}" for a, b in merges]
    path.write_text(json.dumps(tj, ensure_ascii=False, separators=(",", ":")))


def main():
    global DEVICE, CKPT, TIME_GUARD
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage", default="all", help="0, 1, 2, 3, 4, K+ (stages K..4), all or export")
    ap.add_argument("--steps-scale", type=float, default=1.0, help="scale every stage's step count (smoke tests)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
    ap.add_argument("--ckpt-dir", default=str(CKPT))
    ap.add_argument("--export", default=str(OUT_DIR), help="where the HF checkpoint is written after stage 4")
    ap.add_argument("--time-guard", action="store_true", help="end a stage early past its budget_s")
    a = ap.parse_args()
    TIME_GUARD = a.time_guard
    DEVICE = torch.device(a.device)
    CKPT = Path(a.ckpt_dir)
    torch.manual_seed(SEED)
    tok = build_processor(4).tokenizer
    used = used_vocab(tok)
    if a.stage == "export":  # write the HF checkpoint from <ckpt-dir>/stage4.pt
        model, small = build(used)
        grow_decoder(model)
        missing, unexpected = load_stage(model, small, CKPT / "stage4.pt")
        assert not unexpected and all("embed_tokens" in n or "lm_head" in n for n in missing), (missing, unexpected)
        export(model, small, used, Path(a.export))
        print(f"saved {a.export} ({C.dir_size(Path(a.export)) / 1e6:.2f} MB)")
        return
    if a.stage == "all":
        stages = [0, 1, 2, 3, 4]
    elif a.stage.endswith("+"):  # e.g. "2+": stages 2, 3 and 4, starting from <ckpt-dir>/stage1.pt
        stages = list(range(int(a.stage[:-1]), 5))
    else:
        stages = [int(a.stage)]
    for k in STAGES:
        STAGES[k]["steps"] = max(1, int(STAGES[k]["steps"] * a.steps_scale))
    model, small = build(used)
    if stages[0] > 0:
        # stage 0 never trains the embedding: resuming at 1, build()'s init is the same one
        load_stage(model, small, CKPT / f"stage{stages[0] - 1}.pt", embedding=stages[0] > 1)
    if stages[0] == 0:
        LOG.write_text("")
    if stages[0] > 0:
        log(f"--- resuming at stage {stages[0]} from {CKPT}/stage{stages[0] - 1}.pt ---")
    log(f"device {DEVICE} torch {torch.__version__} transformers {__import__('transformers').__version__}; "
        f"used vocabulary: {len(used)} ids; params {sum(p.numel() for p in model.parameters())} "
        f"(+ training embedding {small.weight.numel()})")
    model.to(DEVICE)
    small.to(DEVICE)
    CKPT.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    for k in stages:
        torch.manual_seed(SEED + k)
        if k == 0:
            run_encoder_stage(model, a.workers)
        elif k == 4:
            run_decoder_stage(model, small, tok)
        else:
            run_stage(k, model, small, tok, a.workers)
        save_stage(model, small, CKPT / f"stage{k}.pt")
    log(f"training time {time.time() - t0:.0f}s")
    if stages[-1] == 4:
        export(model, small.cpu(), used, Path(a.export))
        log(f"saved {a.export} ({C.dir_size(Path(a.export)) / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
