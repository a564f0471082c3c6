"""What reduced-scale JPEG decoding (libjpeg's DCT scaling, Pillow's `draft`) buys and what it changes.

Decodes the same JPEGs into the square store two ways: full size then resized, and at the largest DCT scale that
keeps the shorter side >= the store size, then resized. Reports seconds per image for each and how far the stored
pixels move (mean and max absolute difference, 0-255). Two sets: hymenoptera's val photos (about 500 x 375, the
lesson's data) and a few synthetic 4032 x 3024 phone-sized photos (smooth content plus noise, quality 90).

    nice -n 15 env PYTHONPATH=src .venv/bin/python bench/decode.py    # -> bench/results/decode.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from headstart.images import read_rgb
from headstart.transforms import Preprocessing, to_store

BENCH = Path(__file__).resolve().parent
HYM = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera" / "val"


def phone_photos(folder: Path, n: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:3024, 0:4032].astype(np.float32)
    out = []
    for i in range(n):
        base = np.stack([128 + 100 * np.sin(xx / rng.uniform(50, 400) + c) * np.cos(yy / rng.uniform(50, 400))
                         for c in range(3)], axis=-1)
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"phone{i}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        out.append(path)
    return out


def measure(files: list[Path], pre: Preprocessing, repeats: int) -> dict:
    def run(min_size):
        times, stores = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            stores = [to_store(read_rgb(f, min_size=min_size), pre) for f in files]
            times.append((time.perf_counter() - t0) / len(files))
        return statistics.median(times), stores

    full_s, full = run(None)
    draft_s, draft = run(pre.store_size)
    diffs = [np.abs(a.astype(np.int16) - b.astype(np.int16)) for a, b in zip(full, draft)]
    changed = sum(bool(d.any()) for d in diffs)
    return {"images": len(files), "store_size": pre.store_size,
            "images_decoded_at_reduced_scale": changed,
            "full_decode_ms_per_image": round(1000 * full_s, 2), "reduced_decode_ms_per_image": round(1000 * draft_s, 2),
            "speedup": round(full_s / draft_s, 2),
            "mean_abs_pixel_difference": round(float(np.mean([d.mean() for d in diffs])), 3),
            "max_abs_pixel_difference": int(max(d.max() for d in diffs))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phones", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=BENCH / "results" / "decode.json")
    args = parser.parse_args()
    pre = Preprocessing(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # store 256, as EfficientNet-Lite0
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other work), {platform.system()}",
              "command": "nice -n 15 env PYTHONPATH=src .venv/bin/python bench/decode.py"}
    if HYM.is_dir():
        result["hymenoptera_val"] = measure(sorted(HYM.rglob("*.jpg")), pre, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        result["phone_photos_4032x3024"] = measure(phone_photos(Path(tmp), args.phones), pre, args.repeats)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
