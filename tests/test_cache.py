"""The decoded-image cache and the cache folder: where it lives, when it is hit, what it keys on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import headstart.cache as cache
from headstart.cache import decode_images
from headstart.data import load_class_folders
from headstart.paths import cache_root
from headstart.transforms import Preprocessing

from test_files import HALF_WRITE, children  # noqa: F401 (a fixture)

PRE = Preprocessing(image_size=28, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=0.875)  # store 32 px


def make_folder(root: Path, per_class: int = 3, size: tuple[int, int] = (40, 30)) -> Path:
    rng = np.random.default_rng(0)
    for label, base in (("a", (200, 40, 40)), ("b", (40, 40, 200))):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            noise = rng.integers(-30, 30, (size[1], size[0], 3))
            Image.fromarray(np.clip(np.array(base) + noise, 0, 255).astype(np.uint8)).save(root / label / f"{i}.png")
    return root


@pytest.fixture
def count_decodes(monkeypatch):
    calls = []
    real = cache.read_store
    monkeypatch.setattr(cache, "read_store", lambda *args: [real(*args), calls.append(1)][0])  # decodes that worked
    return calls


def test_cache_root_order(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("HEADSTART_CACHE", raising=False)
    assert cache_root() == tmp_path / "xdg" / "headstart"
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "flag") == tmp_path / "flag"


def test_second_decode_hits_the_cache(tmp_path, count_decodes):
    images, _ = load_class_folders(make_folder(tmp_path / "data"))
    first = decode_images(images, PRE, tmp_path / "c")
    assert len(count_decodes) == 6 and first.pixels.shape == (6, 32, 32, 3) and first.pixels.dtype == np.uint8
    second = decode_images(images, PRE, tmp_path / "c")
    assert len(count_decodes) == 6  # nothing decoded again
    assert isinstance(second.pixels, np.memmap)
    np.testing.assert_array_equal(np.asarray(first.pixels), np.asarray(second.pixels))
    assert second.kept == first.kept == list(range(6))


def test_the_record_of_cache_use_says_what_was_built_and_what_was_read_back(tmp_path, count_decodes):
    """Inside recording_cache_use: the first decode is built (with its seconds), the second read back with the
    builder's seconds (what reusing it saved); outside it nothing is recorded."""
    images, _ = load_class_folders(make_folder(tmp_path / "data"))
    decode_images(images, PRE, tmp_path / "unrecorded")
    with cache.recording_cache_use() as used:
        decode_images(images, PRE, tmp_path / "c")
        decode_images(images, PRE, tmp_path / "c")
    built, read = used
    assert [built["reused"], read["reused"]] == [False, True] and built["key"] == read["key"]
    assert built["store"] == "decoded" and built["shape"] == [6, 32, 32, 3] and built["seconds"] > 0
    assert read["seconds"] == built["seconds"]  # the builder's time, kept in the entry's metadata
    assert cache.describe_use(built) == "decoded 6 images"
    assert cache.describe_use({"store": "features", "shape": [8, 6, 1280], "start": 4, "views": 8}) == (
        "features @ stage 4 × 8 views (6 images)")
    with cache.recording_cache_use() as later:
        pass
    assert later == [] and len(used) == 2


def test_no_cache_writes_nothing_and_matches(tmp_path, count_decodes):
    images, _ = load_class_folders(make_folder(tmp_path / "data"))
    cached = decode_images(images, PRE, tmp_path / "c")
    uncached = decode_images(images, PRE, tmp_path / "nc", use_cache=False)
    assert not (tmp_path / "nc").exists() and len(count_decodes) == 12
    np.testing.assert_array_equal(np.asarray(cached.pixels), uncached.pixels)


def test_key_follows_content_and_size(tmp_path, count_decodes):
    folder = make_folder(tmp_path / "data")
    images, _ = load_class_folders(folder)
    decode_images(images, PRE, tmp_path / "c")
    Image.new("RGB", (40, 30), (0, 255, 0)).save(folder / "a" / "0.png")  # same name, new pixels
    changed = decode_images(images, PRE, tmp_path / "c")
    assert len(count_decodes) == 12
    assert changed.pixels[0, 16, 16].tolist() == [0, 255, 0]
    decode_images(images, PRE.with_image_size(56), tmp_path / "c")  # another working resolution: another entry
    assert len(count_decodes) == 18
    assert len(list((tmp_path / "c" / "decoded").glob("*.npy"))) == 3


def test_unreadable_files_are_skipped_and_remembered(tmp_path, count_decodes):
    folder = make_folder(tmp_path / "data")
    (folder / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    images, _ = load_class_folders(folder)
    first = decode_images(images, PRE, tmp_path / "c")
    assert len(first.kept) == 6 and len(first.skipped) == 1 and first.skipped[0][0].endswith("broken.png")
    second = decode_images(images, PRE, tmp_path / "c")
    assert second.kept == first.kept and second.skipped == first.skipped and len(count_decodes) == 6


# --------------------------------------------------------------------------- damaged entries, crashes, two processes
def entry_files(cache_dir: Path) -> tuple[Path, Path]:
    (array,) = (cache_dir / "decoded").glob("*.npy")
    return array, array.with_suffix(".json")


def truncate(array: Path, meta: Path) -> None:
    with open(array, "r+b") as f:
        f.truncate(array.stat().st_size // 2)


def zero_the_tail(array: Path, meta: Path) -> None:
    """The length stays; the last bytes are gone (what a power cut without fsync leaves)."""
    with open(array, "r+b") as f:
        f.seek(-100, 2)
        f.write(bytes(100))


def drop_metadata(array: Path, meta: Path) -> None:
    meta.unlink()


def claim_another_shape(array: Path, meta: Path) -> None:
    info = json.loads(meta.read_text())
    info["array"]["shape"][0] += 1
    meta.write_text(json.dumps(info))


def garble_metadata(array: Path, meta: Path) -> None:
    meta.write_text('{"array": {"form')


@pytest.mark.parametrize("damage", [truncate, zero_the_tail, drop_metadata, claim_another_shape, garble_metadata])
def test_a_damaged_entry_is_rebuilt_with_the_same_pixels(tmp_path, count_decodes, damage):
    images, _ = load_class_folders(make_folder(tmp_path / "data"))
    first = np.array(decode_images(images, PRE, tmp_path / "c").pixels)
    damage(*entry_files(tmp_path / "c"))
    again = decode_images(images, PRE, tmp_path / "c")
    assert len(count_decodes) == 12  # decoded again, not read as garbage
    np.testing.assert_array_equal(np.asarray(again.pixels), first)
    decode_images(images, PRE, tmp_path / "c")
    assert len(count_decodes) == 12  # and the rebuilt entry is whole: a hit


def test_a_temp_left_by_a_killed_writer_is_ignored_and_cleaned(tmp_path, count_decodes, children):
    images, _ = load_class_folders(make_folder(tmp_path / "data"))
    first = np.array(decode_images(images, PRE, tmp_path / "c").pixels)
    array, meta = entry_files(tmp_path / "c")
    array.unlink()  # as if the first fill had never finished...
    meta.unlink()
    writer = children(HALF_WRITE, array)  # ...because its writer was killed halfway through the array
    temp = array.parent / writer.expect("writing").split()[1]
    writer.kill()
    assert temp.is_file()
    again = decode_images(images, PRE, tmp_path / "c")
    np.testing.assert_array_equal(np.asarray(again.pixels), first)
    assert len(count_decodes) == 12 and not temp.exists()
    assert sorted(p.suffix for p in array.parent.iterdir()) == [".json", ".lock", ".npy"]


FILL_DECODED = """
import dataclasses, json, sys, threading
from pathlib import Path
import numpy as np
from headstart.cache import decode_images
from headstart.data import load_class_folders
from headstart.images import read_rgb
from headstart.transforms import Preprocessing

folder, cache_dir, role, result = sys.argv[1:5]
reads, gate = [], threading.Lock()

def read(ref):
    with gate:
        if role == "first" and not reads:
            print("decoding", flush=True)
            sys.stdin.readline()  # holds the entry's lock, mid-fill, until the test says go
        reads.append(ref)
    return read_rgb(ref)

images, _ = load_class_folders(Path(folder))
pre = Preprocessing(image_size=28, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=0.875)
decoded = decode_images(dataclasses.replace(images, read=read), pre, cache_dir)
np.save(result, np.asarray(decoded.pixels))
print("done", json.dumps({"reads": len(reads), "kept": decoded.kept}), flush=True)
"""


def test_two_processes_filling_one_entry_decode_it_once_and_agree(tmp_path, children):
    folder = make_folder(tmp_path / "data")
    first = children(FILL_DECODED, folder, tmp_path / "c", "first", tmp_path / "first.npy")
    first.expect("decoding")  # the first holds the entry's lock, halfway through filling it
    second = children(FILL_DECODED, folder, tmp_path / "c", "second", tmp_path / "second.npy")
    assert f"pid {first.pid}" in second.expect("waiting for another headstart process")
    first.send()
    results = [json.loads(child.expect("done").split(" ", 1)[1]) for child in (first, second)]
    assert first.finish() == 0 and second.finish() == 0
    assert [r["reads"] for r in results] == [6, 0]  # the second read the first's entry instead of decoding
    assert results[0]["kept"] == results[1]["kept"] == list(range(6))
    np.testing.assert_array_equal(np.load(tmp_path / "first.npy"), np.load(tmp_path / "second.npy"))
    images, _ = load_class_folders(folder)
    np.testing.assert_array_equal(np.load(tmp_path / "first.npy"), decode_images(images, PRE, use_cache=False).pixels)
    assert sorted(p.suffix for p in (tmp_path / "c" / "decoded").iterdir()) == [".json", ".lock", ".npy"]
