"""Activations of a frozen prefix, computed once.

When the first k stage groups are frozen and the training images are not augmented, their output for a
given image never changes: computing it again every epoch (the PyTorch tutorial's loop) is pure waste.
`prefix_activations` runs the prefix once per image in inference mode and keeps the result — pooled
features when the whole backbone is frozen (`linear`), feature maps otherwise — in memory and, for
pretrained weights, on disk, keyed by model, weights, preprocessing, the decoded pixels and the cut point.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2.functional import center_crop

from headstart.backbones import StagedModel
from headstart.cache import cache_root, digest
from headstart.progress import progress_bar
from headstart.transforms import Preprocessing, normalize_batch

MAX_CACHE_BYTES = 3 * 1024**3  # beyond this, stream images through the frozen prefix instead


@torch.no_grad()
def run_prefix(model: StagedModel, images: torch.Tensor, start: int, pre: Preprocessing) -> torch.Tensor:
    """Normalised uint8 images through stage groups [0, start); pooled when that is the whole backbone."""
    x = model.forward_to(normalize_batch(images, pre), start)
    return model.head.features(x) if start == len(model.stages) else x


def prefix_activations(
    model: StagedModel,
    pixels: np.ndarray,
    start: int,
    pre: Preprocessing,
    device: torch.device,
    *,
    batch_size: int = 64,
    views: int = 0,
    augment_transform=None,
    source_key: str | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    seed: int = 0,
) -> torch.Tensor | None:
    """Output of the frozen prefix for every image (N x ...), or None if it would not fit in memory.

    With `views` > 0, returns V x N x ... : V augmented views of every image (for `linear` with
    augmentation: each epoch trains on one view per image, drawn from a fixed pool).
    The prefix's groups must already be in eval mode (set_train_mode does that for frozen groups).
    """
    key = None
    if use_cache and source_key and model.pretrained:
        key = digest("prefix-v1", source_key, model.name, model.weights, pre.to_dict(), start, views, seed if views else 0)
        path = cache_root(cache_dir) / "features" / f"{key}.pt"
        if path.is_file():
            return torch.load(path, map_location="cpu", weights_only=True)
    first = torch.from_numpy(np.array(pixels[:1])).permute(0, 3, 1, 2)
    probe = run_prefix(model, _eval_crop(first, pre, augment_transform if views else None).to(device), start, pre)
    n_views = max(views, 1)
    if probe[0].numel() * 4 * len(pixels) * n_views > MAX_CACHE_BYTES:
        return None
    out = torch.empty((n_views, len(pixels), *probe.shape[1:]), dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    with progress_bar() as bar:
        task = bar.add_task(f"features @ stage {start}", total=len(pixels) * n_views)
        for v in range(n_views):
            for i in range(0, len(pixels), batch_size):
                chunk = torch.from_numpy(np.array(pixels[i : i + batch_size])).permute(0, 3, 1, 2)
                if views:
                    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
                chunk = _eval_crop(chunk, pre, augment_transform if views else None)
                out[v, i : i + len(chunk)] = run_prefix(model, chunk.to(device), start, pre).float().cpu()
                bar.advance(task, len(chunk))
    out = out if views else out[0]
    if key:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(out, tmp)
        os.replace(tmp, path)
    return out


def _eval_crop(chunk: torch.Tensor, pre: Preprocessing, augment_transform) -> torch.Tensor:
    if augment_transform is not None:
        return torch.stack([augment_transform(img) for img in chunk])
    return center_crop(chunk, [pre.image_size, pre.image_size])  # the very op eval_transform applies
