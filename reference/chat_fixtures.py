"""Chat template fixtures: test/fixtures/chat_template/{cases.json, chat_template.jinja}."""
from __future__ import annotations

from pathlib import Path

import common as C

IMG = {"type": "image", "url": "https://example.com/a.png"}
IMG2 = {"type": "image", "url": "https://example.com/b.png"}
VID = {"type": "video", "url": "https://example.com/v.mp4"}


def T(s):
    return {"type": "text", "text": s}


CASES = [
    ("single_image", [{"role": "user", "content": [IMG, T("Describe the bar plot in the image.")]}], True),
    ("text_only", [{"role": "user", "content": [T("What is the capital of France?")]}], True),
    ("text_only_no_generation_prompt", [{"role": "user", "content": [T("Hello")]}], False),
    ("system_override", [{"role": "system", "content": "  You are a terse assistant.\n"},
                         {"role": "user", "content": [IMG, T("What is this?")]}], True),
    ("multi_turn", [{"role": "user", "content": [IMG, T("What is in the image?")]},
                    {"role": "assistant", "content": [T("A cat on a sofa.")]},
                    {"role": "user", "content": [T("  What colour is it?  ")]}], True),
    ("multi_turn_ends_with_assistant", [{"role": "user", "content": [T("Hi")]},
                                        {"role": "assistant", "content": [T("Hello! How can I help?")]}], False),
    ("text_before_image", [{"role": "user", "content": [T("Look at this:"), IMG, T("and tell me more.")]}], True),
    ("two_images", [{"role": "user", "content": [IMG, T("Compare"), IMG2, T("these two.")]}], True),
    ("video", [{"role": "user", "content": [VID, T("Can you describe the video in detail?")]}], True),
    ("image_and_video_mixed_order", [{"role": "user", "content": [T("First text"), VID, IMG, T("last text")]}], True),
    ("whitespace_and_newlines", [{"role": "user", "content": [T("\n\n  line one\nline two\t \n")]}], True),
]


def generate(out_root: Path, processor, log=print) -> dict:
    out = Path(out_root) / "chat_template"
    out.mkdir(parents=True, exist_ok=True)
    (out / "chat_template.jinja").write_text(C.PLM_CHAT_TEMPLATE)
    tok = processor.tokenizer
    cases = []
    for name, msgs, agp in CASES:
        rendered = processor.apply_chat_template(msgs, add_generation_prompt=agp, tokenize=False)
        via_tok = tok.apply_chat_template(msgs, add_generation_prompt=agp, tokenize=False,
                                          chat_template=C.PLM_CHAT_TEMPLATE)
        assert rendered == via_tok, name
        ids = tok.encode(rendered, add_special_tokens=False)
        cases.append({"name": name, "messages": msgs, "add_generation_prompt": agp,
                      "bos_token": tok.bos_token, "rendered": rendered, "ids": ids})
    C.write_json(out / "cases.json", {
        "chat_template": C.PLM_CHAT_TEMPLATE,
        "note": "rendered = PerceptionLMProcessor.apply_chat_template(messages, add_generation_prompt, "
                "tokenize=False) with bos_token <|begin_of_text|>; ids = PLM tokenizer encode(rendered, "
                "add_special_tokens=False) before placeholder expansion",
        "cases": cases})
    log(f"  chat_template: {len(cases)} cases")
    return {"cases": len(cases)}
