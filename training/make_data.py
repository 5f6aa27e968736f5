"""Deterministic synthetic "shapes world" for training the bundled tiny PerceptionLM.

Every scene is a pure function of an integer seed: 1-4 objects (5 shapes x 8 colours, two sizes),
each in its own cell of a 3x3 grid (jittered), on a varied, slightly noisy background. From the scene
description we derive a caption and question-answer pairs (colour, shape, count, position, relations).

Training uses seeds [TRAIN_BASE, TRAIN_BASE + n), the held-out test set uses seeds [TEST_BASE, ...):
the ranges are disjoint, so no test image is ever seen in training.

    python training/make_data.py --out training/data/test --n 500      # writes PNGs + test.jsonl
"""
from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

SIZE = 224
SHAPES = ["circle", "square", "triangle", "star", "cross"]
COLOURS = {
    "red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (240, 220, 20),
    "purple": (140, 40, 180), "orange": (250, 140, 0), "white": (250, 250, 250), "black": (10, 10, 10),
}
# One object per quadrant: with thumb+tile and 4 tiles, each 112 px tile holds exactly one cell.
GRID_N = 2
CELL_NAMES = [["top left", "top right"], ["bottom left", "bottom right"]]
NUM_WORDS = ["zero", "one", "two", "three", "four"]
TRAIN_BASE = 1_000_000
TEST_BASE = 9_000_000
CAPTION_PROMPT = "Describe the image."


def _background(rng: random.Random) -> Image.Image:
    # mid-tone backgrounds (grey, or lightly tinted) so that white and black objects both stand out
    base = rng.randint(95, 165)
    tint = [rng.randint(-25, 25) for _ in range(3)]
    c0 = tuple(max(0, min(255, base + t)) for t in tint)
    img = Image.new("RGB", (SIZE, SIZE), c0)
    d = ImageDraw.Draw(img)
    kind = rng.random()
    if kind < 0.35:  # vertical gradient bands
        c1 = tuple(max(0, min(255, v + rng.randint(-30, 30))) for v in c0)
        for y in range(SIZE):
            a = y / (SIZE - 1)
            d.line([(0, y), (SIZE, y)], fill=tuple(int(c0[i] * (1 - a) + c1[i] * a) for i in range(3)))
    elif kind < 0.6:  # faint stripes
        c1 = tuple(max(0, min(255, v + rng.choice([-18, 18]))) for v in c0)
        step = rng.randint(8, 20)
        for x in range(0, SIZE, 2 * step):
            d.rectangle([x, 0, x + step - 1, SIZE], fill=c1)
    # speckle noise
    for _ in range(rng.randint(0, 300)):
        x, y = rng.randrange(SIZE), rng.randrange(SIZE)
        v = rng.randint(-25, 25)
        d.point((x, y), fill=tuple(max(0, min(255, c + v)) for c in c0))
    return img


def _draw(d: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, rot: float, fill) -> None:
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        s = r * 0.85
        d.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    elif shape == "triangle":
        pts = [(cx + r * math.cos(rot + a), cy + r * math.sin(rot + a))
               for a in (-math.pi / 2, -math.pi / 2 + 2 * math.pi / 3, -math.pi / 2 + 4 * math.pi / 3)]
        d.polygon(pts, fill=fill)
    elif shape == "star":
        pts = []
        for k in range(10):
            rr = r if k % 2 == 0 else r * 0.42
            a = rot - math.pi / 2 + k * math.pi / 5
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        d.polygon(pts, fill=fill)
    elif shape == "cross":
        w = r * 0.33
        d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    else:
        raise ValueError(shape)


def make_scene(seed: int) -> dict:
    rng = random.Random(seed)
    n = rng.choice([1, 2, 2, 3, 3, 4, 4])
    cells = rng.sample(range(GRID_N * GRID_N), n)
    objs = []
    cell = SIZE / GRID_N
    for c in cells:
        row, col = divmod(c, GRID_N)
        large = rng.random() < 0.5
        r = rng.uniform(36, 42) if large else rng.uniform(25, 30)
        cx = (col + 0.5) * cell + rng.uniform(-1, 1) * min(6, cell / 2 - r - 3)
        cy = (row + 0.5) * cell + rng.uniform(-1, 1) * min(6, cell / 2 - r - 3)
        objs.append({"shape": rng.choice(SHAPES), "colour": rng.choice(list(COLOURS)), "row": row, "col": col,
                     "cx": round(cx, 1), "cy": round(cy, 1), "r": round(r, 1), "size": "large" if large else "small",
                     "rot": round(rng.uniform(-0.3, 0.3), 3)})
    # reading order: top to bottom, then left to right
    objs.sort(key=lambda o: (o["row"], o["col"]))
    return {"seed": seed, "objects": objs, "bg_seed": rng.randrange(1 << 30)}


def render(scene: dict) -> Image.Image:
    rng = random.Random(scene["bg_seed"])
    img = _background(rng)
    d = ImageDraw.Draw(img)
    for o in scene["objects"]:
        _draw(d, o["shape"], o["cx"], o["cy"], o["r"], o["rot"], COLOURS[o["colour"]])
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(0.6))
    return img


def label_map(scene: dict) -> Image.Image:
    """The scene's objects drawn with the same geometry as render(), each pixel = 1 + shape*8 + colour
    (0 = background): the dense target of the encoder pretraining stage."""
    img = Image.new("L", (SIZE, SIZE), 0)
    d = ImageDraw.Draw(img)
    names = list(COLOURS)
    for o in scene["objects"]:
        _draw(d, o["shape"], o["cx"], o["cy"], o["r"], o["rot"], 1 + SHAPES.index(o["shape"]) * 8 + names.index(o["colour"]))
    return img


def phrase(o: dict) -> str:
    return f"{o['colour']} {o['shape']}"


def article(words: str) -> str:
    return "an" if words[:1] in "aeiou" else "a"


def caption(scene: dict) -> str:
    objs = scene["objects"]
    parts = [f"{article(phrase(o))} {phrase(o)} at the {CELL_NAMES[o['row']][o['col']]}" if CELL_NAMES[o["row"]][o["col"]] != "center"
             else f"{article(phrase(o))} {phrase(o)} in the center" for o in objs]
    if len(parts) == 1:
        body = parts[0]
    else:
        body = ", ".join(parts[:-1]) + " and " + parts[-1]
    noun = "object" if len(objs) == 1 else "objects"
    return f"{NUM_WORDS[len(objs)].capitalize()} {noun}: {body}."


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


def _unique(objs, key, val):
    return sum(1 for o in objs if o[key] == val) == 1


def colour_answer(shape: str, colour: str) -> str:
    """"The star is red.": the answer restates its subject, so the tiny decoder looks the object up from
    its own last input token (a clean query) instead of from the question several tokens back; with the
    bare "Red." it never learned to find an object by its shape (colour questions at 53.5%)."""
    return f"The {shape} is {colour}."


def _listed_answer(one: str, many: str, none: str, items: list[str]) -> str:
    if not items:
        return f"{none}, so 0."
    listed = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    return f"{one if len(items) == 1 else many} {listed}, so {len(items)}."


def colour_count_answer(colour: str, shapes: list[str]) -> str:
    """"The red objects are the star and the circle, so 2.": the matching objects in reading order, then
    their number. Each item is one lookup and the count is the length of the list just written; a bare "2."
    left the tiny decoder answering "1." to nearly every attribute count (71.4%)."""
    return _listed_answer(f"The {colour} object is", f"The {colour} objects are", f"There are no {colour} objects",
                          [f"the {s}" for s in shapes])


def shape_count_answer(shape: str, colours: list[str]) -> str:
    """"The stars are the white one and the green one, so 2." (see colour_count_answer)."""
    return _listed_answer(f"The {shape} is", f"The {plural(shape)} are", f"There are no {plural(shape)}",
                          [f"the {c} one" for c in colours])


def questions(scene: dict, rng: random.Random | None = None) -> list[dict]:
    """All well-posed QA pairs of the scene, each {"type", "q", "a"}."""
    objs = scene["objects"]
    qa = []
    # colour: "What color is the <shape>?" when that shape is unique
    for o in objs:
        if _unique(objs, "shape", o["shape"]):
            qa.append({"type": "colour", "q": f"What color is the {o['shape']}?", "a": colour_answer(o["shape"], o["colour"])})
    # shape: "What shape is the <colour> object?" when that colour is unique
    for o in objs:
        if _unique(objs, "colour", o["colour"]):
            qa.append({"type": "shape", "q": f"What shape is the {o['colour']} object?",
                       "a": f"A {o['shape']}."})
    # counts
    qa.append({"type": "count", "q": "How many objects are there?", "a": f"{len(objs)}."})
    present_c = sorted({o["colour"] for o in objs})
    present_s = sorted({o["shape"] for o in objs})
    for c in COLOURS:
        match = [o["shape"] for o in objs if o["colour"] == c]
        if match or (rng is None or rng.random() < 0.15):
            qa.append({"type": "count", "q": f"How many {c} objects are there?", "a": colour_count_answer(c, match)})
    for s in SHAPES:
        match = [o["colour"] for o in objs if o["shape"] == s]
        if match or (rng is None or rng.random() < 0.15):
            qa.append({"type": "count", "q": f"How many {plural(s)} are there?", "a": shape_count_answer(s, match)})
    # position of a uniquely described object
    for o in objs:
        if sum(1 for p in objs if p["colour"] == o["colour"] and p["shape"] == o["shape"]) == 1:
            qa.append({"type": "position", "q": f"Where is the {phrase(o)}?",
                       "a": f"{CELL_NAMES[o['row']][o['col']].capitalize()}."})
    # "what is left of X": the object in the nearest column to the left, if that is unambiguous
    for o in objs:
        if sum(1 for p in objs if p["colour"] == o["colour"] and p["shape"] == o["shape"]) != 1:
            continue
        left = [p for p in objs if p["col"] < o["col"]]
        if not left:
            qa.append({"type": "left_of", "q": f"What is left of the {phrase(o)}?", "a": "Nothing."})
            continue
        best = max(p["col"] for p in left)
        cand = [p for p in left if p["col"] == best]
        if len(cand) == 1:
            qa.append({"type": "left_of", "q": f"What is left of the {phrase(o)}?",
                       "a": f"A {phrase(cand[0])}."})
    return qa


def sample_training_pair(seed: int, caption_prob: float, weights: dict | None = None,
                         rng: random.Random | None = None) -> tuple[dict, str, str, str]:
    """One (scene, prompt, answer, type) for a training step, fully determined by the seed (and by `rng`'s
    state where one is given). Question types are equally likely, or drawn by `weights` (type -> weight,
    default 1)."""
    scene = make_scene(seed)
    if rng is None:
        rng = random.Random(seed * 7919 + 17)
    if rng.random() < caption_prob:
        return scene, CAPTION_PROMPT, caption(scene), "caption"
    qa = questions(scene, rng)
    types = sorted({x["type"] for x in qa})
    t = rng.choice(types) if weights is None else rng.choices(types, [weights.get(x, 1.0) for x in types])[0]
    item = rng.choice([x for x in qa if x["type"] == t])
    return scene, item["q"], item["a"], item["type"]


def write_split(out: Path, base: int, n: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "items.jsonl", "w") as f:
        for i in range(n):
            sc = make_scene(base + i)
            name = f"{base + i}.png"
            render(sc).save(out / name)
            rec = {"image": name, "scene": sc, "caption": caption(sc), "qa": questions(sc)}
            f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).parent / "data" / "test"))
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--base", type=int, default=TEST_BASE)
    a = ap.parse_args()
    write_split(Path(a.out), a.base, a.n)
    print(f"wrote {a.n} scenes to {a.out}")
