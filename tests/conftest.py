"""Tiny fixtures: a few coloured images written by the tests, and a 0.36M-parameter EfficientNet."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own cache folder: no test sees another's (or the user's) cached work."""
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path_factory.mktemp("cache")))
    torch.set_num_threads(min(2, os.cpu_count() or 1))


def draw(colour: tuple[int, int, int], seed: int, size: int = 40) -> Image.Image:
    """A noisy image dominated by one colour, so classes are learnable from a handful of images."""
    rng = np.random.default_rng(seed)
    base = np.array(colour, dtype=np.float64)
    pixels = np.clip(base + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


COLOURS = {"red": (220, 40, 40), "blue": (40, 60, 220), "green": (40, 200, 60)}


def make_folder(root: Path, classes=("red", "blue"), n: int = 6, size: int = 40, seed: int = 0) -> Path:
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            draw(COLOURS[name], seed * 1000 + c * 100 + i, size).save(root / name / f"{i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """train/ and val/ with two colour classes: 6 + 4 images each, 40x40."""
    make_folder(tmp_path / "data" / "train", n=6, seed=1)
    make_folder(tmp_path / "data" / "val", n=4, seed=2)
    return tmp_path / "data"


def needs_shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} not present")
    return path
