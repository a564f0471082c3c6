"""A tiny, learnable class-folder dataset written on the fly (no data files in the repository)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

COLORS = {"ants": (200, 60, 40), "bees": (40, 80, 200)}


def make_dataset(root: Path, train_per_class: int = 8, val_per_class: int = 4, size: int = 40, seed: int = 0) -> Path:
    """root/train/<class>/*.png and root/val/<class>/*.png: noisy images whose mean colour gives the class."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for name, color in COLORS.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                noise = rng.normal(0, 40, (size, size, 3))
                pixels = np.clip(np.array(color) + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root
