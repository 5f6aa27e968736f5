"""Reference fixtures for the PerceptionLM image / video preprocessor.

Runs Hugging Face transformers 5.18 (`PerceptionLMImageProcessor`, the torchvision-backed "fast"
processor, and `PerceptionLMVideoProcessor`) on CPU and writes, under
test/fixtures/image_processor/:

  images/*.{png,jpg}          deterministic, smooth (compressible) test images
  grids.json                  {cases: [{w, h, tile, max_num_tiles, grid: [n_w, n_h]}]} for >= 200 sizes
  pixels/<name>.safetensors   pixels_u8 U8 [tiles, 3, S, S] = round(pixel * 127.5 + 127.5),
                              grid I32 [2] (n_w, n_h), num_tiles I32 [1]; metadata: image, tile_size,
                              max_num_tiles
  video.safetensors           sampling indices (idx_<total>_<n> I64) and one small video case
                              (video_frames U8 [T, H, W, 3], video_pixels_u8 U8 [F, 3, S, S])
  manifest.json               what is where (the test reads it)

Images are handed to HF the way transformers' `load_image` does: PIL open, ImageOps.exif_transpose,
convert("RGB").

Usage: reference/.venv/bin/python reference/image_processor_fixtures.py
"""
from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402,F401  (torchvision shim, thread count, offline env)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw, ImageOps  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from transformers.models.perception_lm.image_processing_perception_lm import PerceptionLMImageProcessor  # noqa: E402
from transformers.models.perception_lm.video_processing_perception_lm import PerceptionLMVideoProcessor  # noqa: E402
from transformers.video_utils import VideoMetadata, default_sample_indices_fn  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "test" / "fixtures" / "image_processor"
IMG = OUT / "images"
PIX = OUT / "pixels"


# ---------------------------------------------------------------------------------------------
# Test images (deterministic, smooth so that PNG/JPEG compress well)
# ---------------------------------------------------------------------------------------------
def gradient_rgb(w: int, h: int, seed: int) -> np.ndarray:
    """[h, w, 3] uint8: smooth gradients plus a few low-frequency waves (no noise)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    u = x / max(w - 1, 1)
    v = y / max(h - 1, 1)
    r = 255 * u
    g = 255 * v
    b = 127.5 + 127.5 * np.sin(2 * math.pi * (1.5 + seed) * u) * np.cos(2 * math.pi * (1 + seed % 3) * v)
    return np.clip(np.stack([r, g, b], -1).round(), 0, 255).astype(np.uint8)


def with_shapes(img: Image.Image) -> Image.Image:
    """Draws a few hard-edged shapes (edges exercise the resampler's ringing and clamping)."""
    d = ImageDraw.Draw(img)
    w, h = img.size
    d.rectangle([w // 8, h // 8, w // 3, h // 3], fill=(255, 255, 255) if img.mode == "RGB" else 255)
    d.ellipse([w // 2, h // 2, w - w // 8, h - h // 10], fill=(0, 0, 0) if img.mode == "RGB" else 0)
    d.line([0, h - 1, w - 1, 0], fill=(255, 0, 0) if img.mode == "RGB" else 128, width=max(1, min(w, h) // 50))
    return img


def make_images() -> dict[str, str]:
    IMG.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}

    def save_rgb(name: str, w: int, h: int, seed: int, ext: str = "png", shapes: bool = True, **kw) -> None:
        im = Image.fromarray(gradient_rgb(w, h, seed), "RGB")
        if shapes and min(w, h) >= 8:
            im = with_shapes(im)
        fn = f"{name}.{ext}"
        im.save(IMG / fn, **kw)
        files[name] = fn

    save_rgb("tiny_1x1", 1, 1, 0, shapes=False)
    save_rgb("tiny_3x5", 3, 5, 1, shapes=False)
    save_rgb("square_448", 448, 448, 2)
    save_rgb("pano_5000x500", 5000, 500, 3)
    save_rgb("portrait_300x800", 300, 800, 4)
    save_rgb("odd_333x517", 333, 517, 5)
    save_rgb("hd_1920x1080", 1920, 1080, 6, ext="jpg", quality=85)

    # Grayscale (mode L).
    g = Image.fromarray(gradient_rgb(320, 240, 7)[..., 1], "L")
    with_shapes(g).save(IMG / "gray_320x240.png")
    files["gray_320x240"] = "gray_320x240.png"

    # RGBA with real transparency; the hidden RGB under alpha=0 is non-trivial so that
    # "drop alpha" (PIL convert) and "composite on white" give different answers.
    rgb = gradient_rgb(200, 150, 8)
    yy, xx = np.mgrid[0:150, 0:200]
    alpha = np.clip(255 * (xx / 199.0) * 1.2, 0, 255).astype(np.uint8)
    alpha[40:90, 60:120] = 0
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(IMG / "rgba_200x150.png")
    files["rgba_200x150"] = "rgba_200x150.png"

    # Palette image with a transparent palette entry.
    p = Image.fromarray(gradient_rgb(180, 120, 9), "RGB").quantize(colors=32, method=Image.Quantize.MEDIANCUT)
    p.info["transparency"] = 0
    p.save(IMG / "palette_180x120.png", transparency=0)
    files["palette_180x120"] = "palette_180x120.png"

    # Gray + alpha (LA).
    la = np.dstack([gradient_rgb(90, 70, 10)[..., 0], np.full((70, 90), 200, np.uint8)])
    Image.fromarray(la, "LA").save(IMG / "gray_alpha_90x70.png")
    files["gray_alpha_90x70"] = "gray_alpha_90x70.png"

    # JPEG with EXIF orientation 6 (rotate 90 CW to display): stored 400x240, displayed 240x400.
    im = with_shapes(Image.fromarray(gradient_rgb(400, 240, 11), "RGB"))
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(IMG / "exif6_400x240.jpg", quality=90, exif=exif.tobytes())
    files["exif6_400x240"] = "exif6_400x240.jpg"

    # 16-bit RGB PNG (PIL reads it as 8-bit RGB by taking the high byte).
    rgb16 = (gradient_rgb(120, 90, 12).astype(np.uint16) * 257 + np.uint16(77)).astype(">u2")
    _write_png16_rgb(IMG / "rgb16_120x90.png", rgb16)
    files["rgb16_120x90"] = "rgb16_120x90.png"
    return files


def _write_png16_rgb(path: Path, arr: np.ndarray) -> None:
    """Minimal 16-bit RGB PNG writer (PIL cannot write 48-bit RGB)."""
    import struct
    import zlib

    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(t: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + t + data + struct.pack(">I", zlib.crc32(t + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    path.write_bytes(png)


def load_like_transformers(path: Path) -> Image.Image:
    """transformers.image_utils.load_image for a local path."""
    im = Image.open(path)
    im = ImageOps.exif_transpose(im)
    return im.convert("RGB")


# ---------------------------------------------------------------------------------------------
# Grids
# ---------------------------------------------------------------------------------------------
def hf_grid(proc: PerceptionLMImageProcessor, w: int, h: int, tile: int, max_num_tiles: int) -> list[int]:
    """The grid branch of PerceptionLMImageProcessor.resize (without the pixel resize)."""
    if max_num_tiles > 1:
        g = proc._fit_image_to_canvas(img_width=w, img_height=h, tile_size=tile)
        if g is None:
            g = proc._find_closest_aspect_ratio(img_width=w, img_height=h, tile_size=tile)
    else:
        g = (1, 1)
    return [int(g[0]), int(g[1])]


def grid_sizes() -> list[tuple[int, int]]:
    sizes = [
        (1, 1), (1, 2), (2, 1), (3, 5), (5, 3), (100, 100), (447, 447), (448, 448), (449, 449),
        (640, 480), (480, 640), (1280, 720), (720, 1280), (1920, 1080), (1080, 1920), (300, 800),
        (800, 300), (5000, 500), (500, 5000), (4000, 3000), (3000, 4000), (333, 517), (517, 333),
        (2688, 2688), (2689, 2688), (2688, 2689), (896, 448), (448, 896), (897, 448), (16128, 448),
        (16129, 448), (448, 16129), (20000, 20000), (20000, 1), (1, 20000), (8064, 896), (8065, 897),
        (1344, 1344), (1345, 1343), (3584, 1792), (3585, 1792), (1000, 1001), (1001, 1000), (999, 1000),
        (12345, 6789), (6789, 12345), (65535, 1), (1, 65535), (4032, 3024), (3024, 4032), (2048, 1536),
        (1536, 2048), (7680, 4320), (4320, 7680), (2560, 1080), (1080, 2560), (3440, 1440), (1170, 2532),
    ]
    rng = random.Random(1234)
    while len(sizes) < 230:
        kind = rng.random()
        if kind < 0.4:
            w, h = rng.randint(1, 3000), rng.randint(1, 3000)
        elif kind < 0.7:
            w, h = rng.randint(1, 20000), rng.randint(1, 20000)
        elif kind < 0.85:  # near multiples of 448
            w = 448 * rng.randint(1, 12) + rng.choice([-1, 0, 1])
            h = 448 * rng.randint(1, 12) + rng.choice([-1, 0, 1])
        else:  # extreme aspect ratios
            a = rng.randint(1, 200)
            b = rng.randint(2000, 40000)
            w, h = (a, b) if rng.random() < 0.5 else (b, a)
        sizes.append((max(1, w), max(1, h)))
    return sizes


def make_grids() -> int:
    cases = []
    procs = {m: PerceptionLMImageProcessor(max_num_tiles=m, tile_size=448) for m in (36, 16, 4, 2, 1)}
    for (w, h) in grid_sizes():
        for m, proc in procs.items():
            cases.append({"w": w, "h": h, "tile": 448, "max_num_tiles": m, "grid": hf_grid(proc, w, h, 448, m)})
    # A few non-448 tiles.
    for (w, h) in [(100, 100), (640, 480), (1920, 1080), (5000, 500), (333, 517)]:
        for tile in (224, 112):
            for m in (36, 4):
                p = PerceptionLMImageProcessor(max_num_tiles=m, tile_size=tile)
                cases.append({"w": w, "h": h, "tile": tile, "max_num_tiles": m, "grid": hf_grid(p, w, h, tile, m)})
    (OUT / "grids.json").write_text(json.dumps({"source": "transformers 5.18 PerceptionLMImageProcessor", "cases": cases}))
    return len(cases)


# ---------------------------------------------------------------------------------------------
# Pixels
# ---------------------------------------------------------------------------------------------
PIXEL_CASES = [
    # (image name, tile_size, max_num_tiles)
    ("tiny_1x1", 112, 4),
    ("tiny_3x5", 112, 4),
    ("square_448", 448, 1),
    ("pano_5000x500", 112, 4),
    ("portrait_300x800", 224, 2),
    ("odd_333x517", 112, 4),
    ("hd_1920x1080", 224, 2),
    ("gray_320x240", 112, 4),
    ("rgba_200x150", 112, 4),
    ("palette_180x120", 112, 2),
    ("gray_alpha_90x70", 112, 2),
    ("exif6_400x240", 112, 4),
    ("rgb16_120x90", 112, 2),
]


def make_pixels(files: dict[str, str]) -> list[dict]:
    PIX.mkdir(parents=True, exist_ok=True)
    out = []
    for name, tile, m in PIXEL_CASES:
        img = load_like_transformers(IMG / files[name])
        proc = PerceptionLMImageProcessor(max_num_tiles=m, tile_size=tile)
        pv = proc(images=img, return_tensors="pt")["pixel_values"][0]  # [T, 3, S, S] float32
        u8f = pv * 127.5 + 127.5
        u8 = u8f.round()
        assert float((u8f - u8).abs().max()) < 1e-3, "normalized values are not exact uint8 levels"
        grid = hf_grid(proc, img.width, img.height, tile, m)
        fn = f"{name}_t{tile}_m{m}.safetensors"
        save_file(
            {
                "pixels_u8": u8.to(torch.uint8).contiguous(),
                "grid": torch.tensor(grid, dtype=torch.int32),
                "num_tiles": torch.tensor([pv.shape[0]], dtype=torch.int32),
            },
            str(PIX / fn),
            metadata={"image": files[name], "tile_size": str(tile), "max_num_tiles": str(m)},
        )
        assert pv.shape[0] == 1 + grid[0] * grid[1]
        out.append({"name": name, "image": files[name], "file": f"pixels/{fn}", "tile_size": tile,
                    "max_num_tiles": m, "grid": grid, "num_tiles": int(pv.shape[0]),
                    "decoded_size": [img.width, img.height]})
    return out


# ---------------------------------------------------------------------------------------------
# Video
# ---------------------------------------------------------------------------------------------
SAMPLING = [(1, 1), (5, 5), (10, 3), (32, 32), (33, 32), (100, 32), (97, 32), (1000, 32), (301, 7), (7, 4),
            (123457, 32), (64, 16), (2, 1)]


def make_video() -> dict:
    tensors: dict[str, torch.Tensor] = {}
    sampling = []
    for total, n in SAMPLING:
        idx = default_sample_indices_fn(VideoMetadata(total_num_frames=total, fps=30.0), num_frames=n)
        tensors[f"idx_{total}_{n}"] = torch.tensor(np.asarray(idx, dtype=np.int64))
        sampling.append({"total": total, "num_frames": n, "key": f"idx_{total}_{n}"})
    # Requesting more frames than exist is an error in HF.
    try:
        default_sample_indices_fn(VideoMetadata(total_num_frames=3, fps=30.0), num_frames=4)
        raise AssertionError("expected an error")
    except ValueError:
        pass

    # One small clip: T frames of W x H, sampled to F frames and resized to S x S.
    T, W, H, F, S = 9, 96, 64, 4, 112
    frames = np.stack([gradient_rgb(W, H, 20 + t) for t in range(T)])  # [T, H, W, 3]
    for t in range(T):  # a moving square so frames differ at hard edges
        frames[t, 10:30, 5 + 8 * t: 25 + 8 * t] = 255
    vp = PerceptionLMVideoProcessor(size={"height": S, "width": S})
    meta = VideoMetadata(total_num_frames=T, fps=30.0, width=W, height=H)
    res = vp(videos=[frames], video_metadata=[meta], do_sample_frames=True, num_frames=F, return_tensors="pt")
    pv = res["pixel_values_videos"][0]  # [F, 3, S, S]
    u8f = pv * 127.5 + 127.5
    assert float((u8f - u8f.round()).abs().max()) < 1e-3
    idx = default_sample_indices_fn(meta, num_frames=F)
    tensors["video_frames"] = torch.from_numpy(frames).contiguous()
    tensors["video_pixels_u8"] = u8f.round().to(torch.uint8).contiguous()
    tensors["video_indices"] = torch.tensor(np.asarray(idx, dtype=np.int64))
    save_file(tensors, str(OUT / "video.safetensors"))
    return {"file": "video.safetensors", "sampling": sampling,
            "clip": {"frames": T, "width": W, "height": H, "num_frames": F, "size": S}}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    files = make_images()
    n_grids = make_grids()
    pixels = make_pixels(files)
    video = make_video()
    manifest = {"generator": "reference/image_processor_fixtures.py", "transformers": __import__("transformers").__version__,
                "torch": torch.__version__, "images": files, "grids": "grids.json", "grid_cases": n_grids,
                "pixels": pixels, "video": video}
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1))
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {n_grids} grid cases, {len(pixels)} pixel cases; fixtures total {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
