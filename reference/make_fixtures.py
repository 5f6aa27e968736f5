#!/usr/bin/env python3
"""Regenerate every reference fixture from Hugging Face transformers (CPU, float32, offline).

    reference/.venv/bin/python reference/make_fixtures.py --out test/fixtures [--only text,vision,...]

Jobs: text, vision, tokenizer, chat, tiny (models/plm-tiny-random + e2e), e2e (alias of tiny).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C  # noqa: E402  (installs the torchvision shim first)

JOBS = ["tokenizer", "text", "vision", "tiny", "chat"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(C.REPO / "test" / "fixtures"))
    ap.add_argument("--only", default=",".join(JOBS),
                    help="comma list of: " + ", ".join(JOBS) + " (e2e = tiny)")
    a = ap.parse_args(argv)
    only = {j.strip() for j in a.only.split(",") if j.strip()}
    if "e2e" in only:
        only.discard("e2e")
        only.add("tiny")
    bad = only - set(JOBS)
    if bad:
        ap.error(f"unknown job(s): {sorted(bad)}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if "tokenizer" in only:
        import tokenizer_fixtures
        tokenizer_fixtures.generate(out)
    if "text" in only:
        import text_fixtures
        text_fixtures.generate(out)
    if "vision" in only:
        import vision_fixtures
        vision_fixtures.generate(out)
    if "tiny" in only:
        import bundled_model
        bundled_model.generate(out)
    if "chat" in only:
        import bundled_model
        import chat_fixtures
        if (bundled_model.MODEL_DIR / "tokenizer.json").exists():
            from transformers import PerceptionLMProcessor
            proc = PerceptionLMProcessor.from_pretrained(str(bundled_model.MODEL_DIR))
        else:
            proc = bundled_model.build_processor()
        chat_fixtures.generate(out, proc)
    print(f"done in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
