"""Activations of a frozen prefix, computed once.

When the first k stage groups are frozen and the training images are not augmented, their output for a
given image never changes: computing it again every epoch (the PyTorch tutorial's loop) is pure waste.
`prefix_activations` runs the prefix once per image in inference mode and keeps the result — pooled
features when the whole backbone is frozen (`linear`), feature maps otherwise — in memory and on disk,
keyed by the model, the prefix's actual weights, the preprocessing, the decoded pixels and the cut point.
A second run, or every strategy of `compare` with the same cut, loads the file instead of running the
backbone. The file is an entry of `cache.py`'s store: written whole or not at all, checked against its
metadata when read (a damaged one is computed again), and filled by one process at a time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2.functional import center_crop

from headstart.backbones import StagedModel
from headstart.cache import cached_entry, digest
from headstart.paths import cache_root
from headstart.precision import autocast
from headstart.progress import progress_bar
from headstart.transforms import Preprocessing, eval_transform, normalize_batch

MAX_CACHE_BYTES = 3 * 1024**3  # beyond this, stream images through the frozen prefix instead
FEATURES_DIR = "features"


def inference_batch_size(image_size: int, device: torch.device | str = "cpu") -> int:
    """Images per forward pass without gradients (frozen prefix, validation, analysis). On the CPU the
    intermediate activations of a batch of 64 at 224 px take ~1 GB (peak RSS, measured) and 16 runs as fast, so
    16 keeps the peak near 300 MB; a GPU takes 8x more. Scaled with the pixel count, so small images still go in
    large batches."""
    base, most = (128, 1024) if torch.device(device).type == "cuda" else (16, 128)
    return int(max(1, min(most, base * (224 / image_size) ** 2)))


def eval_view(pixels: np.ndarray) -> torch.Tensor:
    """Decoded uint8 store images (N x S x S x 3, array or memmap) -> uint8 N x 3 x S x S, not yet cropped."""
    return torch.from_numpy(np.array(pixels)).permute(0, 3, 1, 2)


@torch.no_grad()
def pooled_stage_outputs(model: StagedModel, pixels: np.ndarray, pre: Preprocessing,
                         pool: Callable[[torch.Tensor], torch.Tensor], label: str | None = None,
                         precision: str = "fp32") -> list[torch.Tensor]:
    """Every stage group's output for decoded images, each reduced by `pool` (a list of N x D fp32 tensors on the
    CPU), in one forward pass per image through the eval view (centre crop), under `precision` (resolved). The
    probe pools globally (what a linear head would see); the forgetting monitor keeps a coarse spatial grid (CKA)."""
    model.eval()
    device = next(model.parameters()).device
    batch_size = inference_batch_size(pre.image_size, device)
    crop = eval_transform(pre)
    outs: list[list[torch.Tensor]] = [[] for _ in model.stage_names]
    with progress_bar(transient=label is None) as bar:
        task = bar.add_task(f"{label or 'stage outputs'} ({len(pixels)} images, all stages)", total=len(pixels))
        for i in range(0, len(pixels), batch_size):
            x = normalize_batch(crop(eval_view(pixels[i : i + batch_size])).to(device), pre)
            with autocast(precision, device):
                pooled = [pool(act).float().cpu() for act in model.forward_stages(x)]
            for k, act in enumerate(pooled):
                outs[k].append(act)
            bar.advance(task, len(x))
    return [torch.cat(o) for o in outs]


def prefix_fingerprint(model: StagedModel, start: int) -> str:
    """A hash of the weights and buffers that the prefix [0, start) computes with: the cache follows the actual
    numbers, so another weights file at the same path, or a fine-tuned prefix, never hits a stale entry."""
    h = hashlib.blake2b(digest_size=16)
    for name in model.stage_names[:start]:
        for key, tensor in model.stages[name].state_dict().items():
            h.update(key.encode())
            h.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def features_key(model: StagedModel, start: int, pre: Preprocessing, source_key: str, views: int, seed: int,
                 augment: str | None, precision: str) -> str:
    """The cache key of a prefix's activations: bf16 features differ from fp32 ones in the third digit, so the
    precision they were computed in is part of it."""
    augmentation = (augment, views, seed) if views else None
    return digest("prefix-v2", source_key, model.name, prefix_fingerprint(model, start), pre.to_dict(), start,
                  augmentation, precision)


def run_prefix(model: StagedModel, images: torch.Tensor, start: int, pre: Preprocessing,
               precision: str = "fp32") -> torch.Tensor:
    """Normalised uint8 images through stage groups [0, start); pooled when that is the whole backbone. Kept
    in fp32 whatever `precision` computed it: what trains on it is fp32."""
    with torch.inference_mode(), autocast(precision, images.device):
        x = model.forward_to(normalize_batch(images, pre), start)
        x = model.head.features(x) if start == len(model.stages) else x
        return x.float()


def prefix_activations(
    model: StagedModel,
    pixels: np.ndarray,
    start: int,
    pre: Preprocessing,
    device: torch.device,
    *,
    batch_size: int | None = None,
    views: int = 0,
    augment_transform=None,
    augment: str | None = None,
    source_key: str | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    seed: int = 0,
    precision: str = "fp32",
) -> torch.Tensor | None:
    """Output of the frozen prefix for every image (N x ...), or None if it would not fit in memory.

    With `views` > 0, returns V x N x ... : V augmented views of every image (for `linear` with
    augmentation: each epoch trains on one view per image, drawn from a fixed pool). View v of image i is
    drawn with its own seed, so the pool does not depend on the batch size or on the order of the work.
    `augment` names the preset behind `augment_transform` (it is part of the cache key), `precision` (resolved:
    fp32 or bf16) the prefix's number format (so is it).
    The prefix's groups must already be in eval mode (set_train_mode does that for frozen groups).
    """
    if not (use_cache and source_key):
        return _compute(model, pixels, start, pre, device, batch_size, views, augment_transform, seed, precision)

    def build() -> tuple[np.ndarray, dict] | None:
        out = _compute(model, pixels, start, pre, device, batch_size, views, augment_transform, seed, precision)
        return None if out is None else (out.numpy(), {"model": model.name, "start": start, "views": views})

    key = features_key(model, start, pre, source_key, views, seed, augment, precision)
    # mapped copy-on-write: a writable tensor (torch warns about read-only arrays) whose pages stay on disk
    entry = cached_entry(cache_root(cache_dir) / FEATURES_DIR, key, build, mmap_mode="c")
    return None if entry is None else torch.from_numpy(entry[0])


def _compute(model: StagedModel, pixels: np.ndarray, start: int, pre: Preprocessing, device: torch.device,
             batch_size: int | None, views: int, augment_transform, seed: int, precision: str) -> torch.Tensor | None:
    """The prefix's output for every image (and view), or None if it would not fit in MAX_CACHE_BYTES."""
    transform = augment_transform if views else None
    batch_size = batch_size or inference_batch_size(pre.image_size, device)
    n_views = max(views, 1)
    with torch.random.fork_rng(devices=[]):  # seeding the views must not disturb the caller's random state
        probe = run_prefix(model, _crop(eval_view(pixels[:1]), pre, transform, seed, 0, 0).to(device), start, pre,
                           precision)
        if probe[0].numel() * 4 * len(pixels) * n_views > MAX_CACHE_BYTES:
            return None
        out = torch.empty((n_views, len(pixels), *probe.shape[1:]), dtype=torch.float32)
        with progress_bar() as bar:
            task = bar.add_task(f"features @ stage {start}", total=len(pixels) * n_views)
            for v in range(n_views):
                for i in range(0, len(pixels), batch_size):
                    chunk = _crop(eval_view(pixels[i : i + batch_size]), pre, transform, seed, v, i)
                    out[v, i : i + len(chunk)] = run_prefix(model, chunk.to(device, non_blocking=True), start, pre,
                                                                  precision).cpu()
                    bar.advance(task, len(chunk))
    return out if views else out[0]


def _crop(chunk: torch.Tensor, pre: Preprocessing, augment_transform, seed: int, view: int, first: int) -> torch.Tensor:
    if augment_transform is None:
        return center_crop(chunk, [pre.image_size, pre.image_size])  # the very op eval_transform applies
    views = []
    for j, img in enumerate(chunk):
        torch.manual_seed(view_seed(seed, view, first + j))
        views.append(augment_transform(img))
    return torch.stack(views)


def view_seed(seed: int, view: int, index: int) -> int:
    """The random seed of augmented view `view` of image `index`."""
    return ((seed * 1_000_003 + view) * 1_000_000_007 + index) & 0x7FFF_FFFF_FFFF_FFFF
