"""The decoded-image cache and the cache folder: where it lives, when it is hit, what it keys on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import headstart.cache as cache
from headstart.cache import decode_images
from headstart.data import load_class_folders
from headstart.paths import cache_root
from headstart.transforms import Preprocessing

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
    real = cache.to_store
    monkeypatch.setattr(cache, "to_store", lambda img, pre: calls.append(1) or real(img, pre))
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
