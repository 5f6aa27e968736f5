"""samples/scene{1,2,3}.png: held-out scenes for the README's first command (`npx plm describe`).

Seeds come from the test range (never used in training), starting at SAMPLES_BASE: the first scene with
2, 3 and 4 objects respectively, chosen by object count only (not by how the model does on them).
samples/scenes.json records each scene and its ground-truth caption; test/cli.test.ts compares the
bundled model's description with it.

    reference/.venv/bin/python training/make_samples.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import make_data as D  # noqa: E402

SAMPLES_BASE = D.TEST_BASE + 8000
OUT = HERE.parent / "samples"


def main() -> None:
    picked, seed = [], SAMPLES_BASE
    for want in (2, 3, 4):
        while len(D.make_scene(seed)["objects"]) != want:
            seed += 1
        picked.append(seed)
        seed += 1
    records = []
    for i, s in enumerate(picked, 1):
        scene = D.make_scene(s)
        name = f"scene{i}.png"
        D.render(scene).save(OUT / name, optimize=True)
        records.append({"image": name, "seed": s, "caption": D.caption(scene), "scene": scene})
    (OUT / "scenes.json").write_text(json.dumps({"generator": "training/make_samples.py", "scenes": records}, indent=2) + "\n")
    for r in records:
        print(r["image"], r["caption"])


if __name__ == "__main__":
    main()
