"""Work done once and kept: decoded images, and (see `features.py`) frozen-backbone activations.

Decoding JPEGs dominates a naive CPU training loop (the PyTorch tutorial decodes every image again in every
epoch). headstart decodes each image once, at the working resolution, into a uint8 array on disk that is
memory-mapped back; a second run, or every strategy of `compare`, reuses it. Entries are keyed by the
content of the images and the preprocessing, never by file names or dates, so an edited file is re-read.

Where: `--cache-dir`, else `$HEADSTART_CACHE`, else the user's cache folder (`$XDG_CACHE_HOME/headstart`).

Every entry (here and in `features.py`) is an array file and a metadata file that describes it (shape, dtype,
length on disk, a checksum of sampled blocks), each written atomically, the metadata last: an entry is
complete when its metadata exists and matches its array. A reader that finds an entry missing, truncated or
not matching rebuilds it. Two processes filling the same entry take turns on a per-entry lock: the second
waits for the first and reads its result instead of computing it again.

What was computed and what was reused is on the record: code run inside `recording_cache_use()` gets one line per
entry it touched (built here, or read back with the seconds its builder spent), so a run's run.json, and
compare's summary over its cells, can say what each one computed and what it took from another.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from headstart.console import console, info
from headstart.data import ImageSet
from headstart.files import atomic_path, atomic_write_json, exclusive, remove_stale_temps
from headstart.images import UnreadableImage
from headstart.paths import cache_root
from headstart.progress import progress_bar
from headstart.transforms import Preprocessing, read_store


def digest(*parts: object) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- entries: an array + its metadata
ENTRY_FORMAT = "headstart-array-v1"
SAMPLE_BYTES = 64 * 1024  # per sampled block: three of them cost microseconds, even for a 3 GB entry


def entry_paths(folder: Path, key: str) -> tuple[Path, Path]:
    return folder / f"{key}.npy", folder / f"{key}.json"


def sampled_checksum(path: Path, data_offset: int, nbytes: int) -> str:
    """A hash of the first, middle and last block of an array file's data. Hashing the whole array would
    re-read gigabytes on every cache hit; the exact length already catches truncation, and these blocks catch
    the usual other damage (a file that kept its length but lost its tail to zeros after a power cut)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for start in sorted({0, max(0, nbytes // 2 - SAMPLE_BYTES // 2), max(0, nbytes - SAMPLE_BYTES)}):
            f.seek(data_offset + start)
            h.update(f.read(min(SAMPLE_BYTES, nbytes - start)))
    return h.hexdigest()


def read_entry(folder: Path, key: str, mmap_mode: str = "r", report: bool = True) -> tuple[np.ndarray, dict] | None:
    """The memory-mapped array of a complete entry and the metadata written with it; None when the entry is
    missing, half there, truncated or does not match its metadata (the caller rebuilds it)."""
    array_path, meta_path = entry_paths(folder, key)
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        spec = meta["array"]
        if spec["format"] != ENTRY_FORMAT or array_path.stat().st_size != spec["file_bytes"]:
            raise ValueError("length")
        array = np.load(array_path, mmap_mode=mmap_mode)
        if list(array.shape) != spec["shape"] or array.dtype.str != spec["dtype"] or array.nbytes != spec["nbytes"]:
            raise ValueError("shape")
        if sampled_checksum(array_path, spec["file_bytes"] - spec["nbytes"], spec["nbytes"]) != spec["checksum"]:
            raise ValueError("checksum")
    except (OSError, ValueError, KeyError, TypeError):  # (json's decode error is a ValueError)
        if report:
            info(f"cache entry {array_path} is incomplete or damaged: rebuilding it")
        return None
    return array, {k: v for k, v in meta.items() if k != "array"}


def write_entry(folder: Path, key: str, array: np.ndarray, meta: dict, mmap_mode: str = "r") -> tuple[np.ndarray, dict]:
    """Store `array` with `meta` (JSON) as entry `key`; returns them as `read_entry` will (memory-mapped).
    The old metadata goes first and the new comes last, so no reader pairs a new array with old metadata."""
    folder.mkdir(parents=True, exist_ok=True)
    array_path, meta_path = entry_paths(folder, key)
    meta_path.unlink(missing_ok=True)
    array = np.ascontiguousarray(array)
    with atomic_path(array_path) as tmp:
        np.save(tmp, array)
        file_bytes = tmp.stat().st_size
        spec = {"format": ENTRY_FORMAT, "shape": list(array.shape), "dtype": array.dtype.str, "nbytes": array.nbytes,
                "file_bytes": file_bytes, "checksum": sampled_checksum(tmp, file_bytes - array.nbytes, array.nbytes)}
    atomic_write_json(meta_path, {"array": spec, **meta}, indent=None)
    return np.load(array_path, mmap_mode=mmap_mode), json.loads(json.dumps(meta))


_CACHE_USE: ContextVar[list[dict] | None] = ContextVar("headstart_cache_use", default=None)


@contextmanager
def recording_cache_use() -> Iterator[list[dict]]:
    """The cache entries that the code inside builds or reads, one record each, appended as they happen:
    {"store": "decoded" | "features", "reused": whether it was there already (built by an earlier run, another
    cell, or another process we waited for), "seconds": what building it took (when reused: what its builder
    spent, so what reusing it saved; None for entries older than that record), "shape", "mb", and the entry's
    description (the prefix's stage and views for features)}. Wrapped around a run, not inside its loop."""
    token = _CACHE_USE.set([])
    try:
        yield _CACHE_USE.get()
    finally:
        _CACHE_USE.reset(token)


def _note_use(folder: Path, key: str, entry: tuple[np.ndarray, dict], reused: bool) -> None:
    records = _CACHE_USE.get()
    if records is None:
        return
    array, meta = entry
    described = {k: meta[k] for k in ("start", "views") if k in meta}
    records.append({"store": folder.name, "key": key[:16], "reused": reused, "seconds": meta.get("build_seconds"),
                    "shape": list(array.shape), "mb": round(array.nbytes / 2**20, 1), **described})


def describe_use(record: dict) -> str:
    """One `recording_cache_use` record in words: 'decoded 195 images', 'features @ stage 4 × 8 views (195 images)'."""
    shape = record["shape"]
    if record["store"] != "features":
        return f"{record['store']} {shape[0]} images"
    views = record.get("views") or 0
    return (f"features @ stage {record.get('start')}" + (f" × {views} views" if views else "")
            + f" ({shape[1] if views else shape[0]} images)")


def cached_entry(folder: Path, key: str, build: Callable[[], tuple[np.ndarray, dict] | None],
                 mmap_mode: str = "r") -> tuple[np.ndarray, dict] | None:
    """Entry `key` of `folder`, built by `build()` (array, metadata) when it is not there or not whole. One
    process builds an entry at a time: a second one waits for the first (the lock dies with its process, so a
    killed builder never blocks anyone) and then reads what it wrote. `build` may return None: nothing is
    stored. The entry's metadata keeps the seconds `build` took (`build_seconds`), for `recording_cache_use`."""
    entry = read_entry(folder, key, mmap_mode)
    if entry is not None:
        _note_use(folder, key, entry, reused=True)
        return entry
    folder.mkdir(parents=True, exist_ok=True)
    with exclusive(folder / f"{key}.lock", on_wait=lambda pid: _say_waiting(folder / key, pid)):
        entry = read_entry(folder, key, mmap_mode, report=False)  # the process we waited for may have written it
        if entry is not None:
            _note_use(folder, key, entry, reused=True)
            return entry
        remove_stale_temps(folder)  # what killed builders left behind, this entry's or another's
        started = time.perf_counter()
        built = build()
        if built is None:
            return None
        array, meta = built
        entry = write_entry(folder, key, array, {**meta, "build_seconds": round(time.perf_counter() - started, 3)},
                            mmap_mode=mmap_mode)
        _note_use(folder, key, entry, reused=False)
        return entry


def _say_waiting(entry: Path, pid: int | None) -> None:
    info(f"waiting for another headstart process (pid {pid or 'unknown'}) that is filling cache entry {entry}")


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
    key = digest("decoded-v2", pre.store_size, pre.interpolation, [images.fingerprint(i) for i in range(len(images))])
    if not use_cache:
        pixels, meta = _decode_all(images, pre, label)
    else:
        pixels, meta = cached_entry(cache_root(cache_dir) / "decoded", key, lambda: _decode_all(images, pre, label))
    return DecodedImages(pixels, meta["kept"], [tuple(s) for s in meta["skipped"]], digest(key, meta["kept"]))


def _decode_all(images: ImageSet, pre: Preprocessing, label: str) -> tuple[np.ndarray, dict]:
    """Every image of the set as S x S x 3 uint8 (the readable ones), with which were kept and why the others
    were skipped."""
    size = pre.store_size
    pixels = np.empty((len(images), size, size, 3), dtype=np.uint8)
    ok = np.zeros(len(images), dtype=bool)
    reasons: dict[int, str] = {}

    def decode_one(i: int) -> None:
        try:
            pixels[i] = read_store(images.refs[i], pre, images.read)  # the one decode every path shares (images.py)
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
    return pixels, {"kept": kept, "skipped": skipped, "size": size}


def clear_cache(cache_dir: str | Path | None = None) -> Path:
    import shutil

    root = cache_root(cache_dir)
    if root.exists():
        shutil.rmtree(root)
    console.print(f"removed {root}")
    return root
