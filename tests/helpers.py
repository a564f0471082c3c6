"""Building blocks for tests that train: a tiny model and decoded splits of a test-made folder."""

from __future__ import annotations

from pathlib import Path

import torch

from headstart.backbones import StagedModel, load_backbone
from headstart.cache import decode_images
from headstart.data import load_data
from headstart.train import Split, TrainConfig

TINY = "test_efficientnet"


def tiny_model(num_classes: int = 2, seed: int = 0) -> StagedModel:
    torch.manual_seed(seed)
    model = load_backbone(TINY, pretrained=False)
    model.reset_head(num_classes)
    return model


def splits_for(folder: Path, model: StagedModel) -> tuple[Split, Split]:
    data = load_data(folder)
    out = []
    for images in (data.train, data.val):
        decoded = decode_images(images, model.preprocessing, use_cache=False)
        out.append(Split(decoded.pixels, torch.tensor([images.labels[i] for i in decoded.kept]), key=None))
    return out[0], out[1]


def one_step_config(**overrides) -> TrainConfig:
    """One epoch of one batch (the fixture has 12 training images): exactly one optimizer step."""
    base = dict(model=TINY, epochs=1, batch_size=64, warmup_epochs=0, patience=None, num_workers=0, use_cache=False)
    return TrainConfig(**{**base, **overrides})
