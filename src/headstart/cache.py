"""Work done once and kept: decoded images, and (see `features.py`) frozen-backbone activations.

Decoding JPEGs dominates a naive CPU training loop (the PyTorch tutorial decodes every image again in every
epoch). headstart decodes each image once, at the working resolution, into a uint8 array on disk that is
memory-mapped back; a second run, or every strategy of `compare`, reuses it. Entries are keyed by the
content of the images and the preprocessing, never by file names or dates, so an edited file is re-read.

Where: `--cache-dir`, else `$HEADSTART_CACHE`, else the user's cache folder (`$XDG_CACHE_HOME/headstart`).
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from headstart.console import console
from headstart.data import ImageSet
from headstart.images import UnreadableImage, read_rgb
from headstart.paths import cache_root
from headstart.progress import progress_bar
from headstart.transforms import Preprocessing, to_store


def digest(*parts: object) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()


@dataclass
class DecodedImages:
    """`pixels[j]` (S x S x 3 uint8) is image `kept[j]` of the ImageSet it came from; the rest were skipped."""

    pixels: np.ndarray
    kept: list[int]
    skipped: list[tuple[str, str]]
    key: str = ""  # names the content (the images' bytes and the store geometry): feature caches build on it


def decode_images(
    images: ImageSet, pre: Preprocessing, cache_dir: str | Path | None = None, use_cache: bool = True,
    label: str = "decode",
) -> DecodedImages:
    """Decode every image once into a square uint8 store at `pre.store_size`, skipping unreadable files."""
    key = digest("decoded-v1", pre.store_size, pre.interpolation, [images.fingerprint(i) for i in range(len(images))])
    folder = cache_root(cache_dir) / "decoded"
    array_path, meta_path = folder / f"{key}.npy", folder / f"{key}.json"
    if use_cache and array_path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        pixels = np.load(array_path, mmap_mode="r")
        return DecodedImages(pixels, meta["kept"], [tuple(s) for s in meta["skipped"]], digest(key, meta["kept"]))

    size = pre.store_size
    pixels = np.empty((len(images), size, size, 3), dtype=np.uint8)
    ok = np.zeros(len(images), dtype=bool)
    reasons: dict[int, str] = {}

    def decode_one(i: int) -> None:
        ref = images.refs[i]
        try:
            img = read_rgb(ref, min_size=size) if images.read is read_rgb else images.read(ref)
            pixels[i] = to_store(img, pre)
            ok[i] = True
        except UnreadableImage as e:
            reasons[i] = str(e)

    # Pillow releases the GIL while decoding and resizing, so threads use every core without pickling images.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool, progress_bar() as bar:
        task = bar.add_task(f"{label} {len(images)} images @ {size}px", total=len(images))
        for _ in pool.map(decode_one, range(len(images))):
            bar.advance(task)

    kept = [i for i in range(len(images)) if ok[i]]
    skipped = [(images.refs[i], reasons[i]) for i in sorted(reasons)]
    pixels = pixels[ok] if len(kept) < len(images) else pixels
    if use_cache:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = array_path.with_name(f"{key}.{os.getpid()}.tmp.npy")  # per process: concurrent runs never collide
        np.save(tmp, pixels)
        os.replace(tmp, array_path)  # atomic: an interrupted run never leaves a half-written entry
        tmp_meta = meta_path.with_name(f"{key}.{os.getpid()}.tmp.json")
        tmp_meta.write_text(json.dumps({"kept": kept, "skipped": skipped, "size": size}))
        os.replace(tmp_meta, meta_path)
        pixels = np.load(array_path, mmap_mode="r")
    return DecodedImages(pixels, kept, skipped, digest(key, kept))


def clear_cache(cache_dir: str | Path | None = None) -> Path:
    import shutil

    root = cache_root(cache_dir)
    if root.exists():
        shutil.rmtree(root)
    console.print(f"removed {root}")
    return root
