"""The training loop: one explicit loop that every strategy runs.

    for epoch:
        trainable = strategy's groups for this epoch        (phases: linear, partial, gradual, lp-ft ...)
        requires_grad and BN mode follow it                 (frozen BatchNorm stays in eval mode)
        if the frozen prefix changed: recompute its cached activations, wrap the model anew for the engine
        train_one_epoch -> evaluate -> history row -> best checkpoint -> early stopping

The engine (`engine.py`, Lightning Fabric) decides where this runs: one device, or N data-parallel processes,
each on its shard of the training images; the loop reads the same either way.

Batches are either uint8 images (normalised here, on the device, then pushed through the frozen prefix
without a graph) or cached prefix activations; `forward_batch` tells them apart by dtype.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from headstart.backbones import StagedModel, count_params
from headstart import engine
from headstart.console import console, info
from headstart.features import inference_batch_size, prefix_activations
from headstart.progress import progress_bar
from headstart.strategies import (
    Strategy,
    apply_trainable,
    parameter_groups,
    set_train_mode,
    trainable_groups,
)
from headstart.transforms import Preprocessing, eval_transform, normalize_batch, train_transform


@dataclass
class TrainConfig:
    """Everything that decides a run besides the data. None means "the strategy's / model's default"."""

    model: str = "efficientnet_lite0"
    strategy: str = "linear"
    epochs: int | None = None
    batch_size: int = 32
    lr: float | None = None
    head_lr: float | None = None
    lr_decay: float | None = None
    train_last: int | None = None
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    warmup_epochs: float = 1.0
    augment: str | None = None
    freeze_bn: bool | None = None  # every BatchNorm keeps its pretrained statistics (None: the strategy's default)
    views: int | None = None  # augmented views of a frozen prefix to cache (None: `default_views`; 0: stream)
    patience: int | None = 5
    seed: int = 0
    image_size: int | None = None
    weights: str | None = None
    cache_dir: str | None = None
    use_cache: bool = True
    device: str = "auto"
    devices: int = 1  # > 1: data-parallel processes (Lightning Fabric DDP); batch_size stays the global batch
    num_workers: int | None = None
    # issue #4 (analysis): forgetting
    l2sp: float = 0.0  # > 0: alpha of the L2-SP penalty alpha/2 ||w - w0||^2 on trainable backbone weights
    monitor_folder: str | None = None  # ImageNet synset folders for the old-task top-1 (None: default if present)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Split:
    """Decoded images (N x S x S x 3 uint8) and their labels, plus a key that names their content."""

    pixels: np.ndarray
    labels: torch.Tensor
    key: str | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class FitResult:
    history: list[dict]
    best_epoch: int
    best_val_accuracy: float
    best_state: dict[str, torch.Tensor]
    interrupted: bool = False
    train_seconds: float = 0.0
    stopped_early: bool = False
    notes: list[str] = field(default_factory=list)
    val_logits: torch.Tensor | None = None  # of the best epoch: the final evaluation needs no second forward pass
    val_labels: torch.Tensor | None = None


class PixelDataset(Dataset):
    """uint8 store -> transformed uint8 C x H x W tensor; no float work and no PIL in the workers."""

    def __init__(self, pixels: np.ndarray, labels: torch.Tensor, transform):
        self.pixels, self.labels, self.transform = pixels, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        img = torch.from_numpy(np.array(self.pixels[i])).permute(2, 0, 1)
        return self.transform(img), self.labels[i]


class ViewsDataset(Dataset):
    """Cached features of V augmented views per image: each epoch draws one view per image."""

    def __init__(self, views: torch.Tensor, labels: torch.Tensor, generator: torch.Generator):
        self.views, self.labels, self.generator = views, labels, generator
        self.choice = torch.zeros(len(labels), dtype=torch.long)

    def new_epoch(self) -> None:
        self.choice = torch.randint(0, len(self.views), (len(self.labels),), generator=self.generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.views[self.choice[i], i], self.labels[i]


def default_workers(augment: str) -> int:
    """Augmentation runs in worker processes only when there is a core to spare for it."""
    if augment == "none":
        return 0
    return min(4, max(0, (os.cpu_count() or 1) - 1))


LINEAR_VIEWS = 8


def default_views(strategy: Strategy, epochs: int, augment: str) -> int:
    """How many augmented views of a frozen prefix to cache when the run does not say (`--views`).

    Only a prefix that stays frozen for the whole run is worth it (linear, partial; not gradual or lp-ft, whose
    prefix changes, nor full). `linear` caches 8: its head trains in no time, so each view costs one backbone
    pass and buys diversity. `partial` caches one view per two epochs: each view is seen about twice and the
    prefix runs half as often as streaming fresh augmentations would — as accurate, and faster (cifar
    cat/dog/horse, 500/class, 8 epochs: 4 views 0.867 in 204 s vs streaming 0.860 in 328 s).
    """
    if augment == "none" or strategy.unfreeze_every or len(strategy.phases) != 1 or not strategy.pretrained:
        return 0
    k = strategy.phases[0].train_last
    if k is None:
        return 0
    return LINEAR_VIEWS if k == 0 else max(2, epochs // 2)


def first_trainable_stage(model: StagedModel, trainable: list[str]) -> int:
    """Index of the first stage group that trains; everything before it is a frozen prefix."""
    for i, name in enumerate(model.stage_names):
        if name in trainable:
            return i
    return len(model.stage_names)


def forward_batch(model: StagedModel, x: torch.Tensor, start: int, pre: Preprocessing, net=None) -> torch.Tensor:
    """Logits for a batch of uint8 images or of cached prefix activations (told apart by dtype). `net` is the
    model as the engine wrapped it for training (DDP); the frozen prefix runs on the bare model, outside it."""
    if x.dtype == torch.uint8:
        x = normalize_batch(x, pre)
        if start > 0:
            with torch.no_grad():  # the frozen prefix: no graph, no activations kept for backward
                x = model.forward_to(x, start)
    return (net if net is not None else model)(x, start=start)


def make_optimizer(name: str, groups: list[dict]) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(groups)
    if name == "sgd":
        return torch.optim.SGD(groups, momentum=0.9, nesterov=True)
    raise ValueError(f"optimizer must be adamw or sgd, got {name!r}")


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """Linear warm-up from 1% of each group's LR, then cosine decay to zero, stepped per batch."""
    from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

    if warmup_steps <= 0 or total_steps <= 1:
        return CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
    warmup_steps = min(warmup_steps, total_steps - 1)
    return SequentialLR(
        optimizer,
        [LinearLR(optimizer, start_factor=0.01, total_iters=warmup_steps),
         CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup_steps))],
        milestones=[warmup_steps],
    )


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    return {g["group"]: g["lr"] for g in optimizer.param_groups}


def train_one_epoch(model, net, batches, start, pre, optimizer, scheduler, fabric, label_smoothing, bar=None, task=None,
                    penalty=None):
    """One pass over this process's `batches`; returns loss and accuracy over every process's images.
    `penalty()` (e.g. L2-SP) is added to the loss that is minimised; the reported loss is the cross-entropy
    alone, so runs with and without it compare."""
    device = fabric.device
    total_loss, correct, seen = 0.0, 0, 0
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = forward_batch(model, x, start, pre, net)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        fabric.backward(loss + penalty() if penalty is not None else loss)  # with N processes: gradients averaged
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
        if bar is not None:
            bar.update(task, advance=len(y), description=f"  train loss {total_loss / seen:.3f} acc {correct / seen:.3f}")
        if engine.stop_requested(fabric):  # Ctrl-C: every process leaves after this same step
            raise KeyboardInterrupt
    total_loss, correct, seen = engine.sum_over_processes(fabric, total_loss, correct, seen)
    return total_loss / max(seen, 1), correct / max(seen, 1)


@torch.no_grad()
def predict_batches(model, batches, start, pre, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels for every batch, with the model in eval mode."""
    model.eval()
    all_logits, all_labels = [], []
    for x, y in batches:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = forward_batch(model, x.to(device, non_blocking=True), start, pre)
        all_logits.append(logits.float().cpu())
        all_labels.append(y)
    return torch.cat(all_logits), torch.cat(all_labels)


def fit(
    model: StagedModel,
    strategy: Strategy,
    train: Split,
    val: Split,
    cfg: TrainConfig,
    *,
    on_checkpoint=None,
    on_epoch=None,
    monitor=None,
    fabric=None,
) -> FitResult:
    """Train `model` under `strategy`; keep the best-on-val weights. Ctrl-C stops cleanly after the batch.

    `on_checkpoint(state, epoch)` is called whenever val accuracy improves (the run directory saves it at
    once, so an interruption or a crash loses nothing); `on_epoch(history)` after every epoch.
    `monitor(model, epoch) -> dict` (e.g. `analysis.drift.ForgettingMonitor`) runs after evaluation; its values
    join the epoch's history row. With several processes (`cfg.devices`), only the first calls the callbacks.
    `fabric` is the engine that `api.train` started (default: one device, `cfg.device`).
    """
    fabric = fabric or engine.start(cfg.device)
    device, first = fabric.device, fabric.is_global_zero  # `first`: the process that writes and reports
    pre = model.preprocessing
    model.to(device).to(memory_format=torch.channels_last)
    epochs = cfg.epochs or strategy.epochs
    augment = cfg.augment or strategy.augment
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = make_optimizer(cfg.optimizer, parameter_groups(model, strategy, cfg.weight_decay))
    batch_size = math.ceil(cfg.batch_size / fabric.world_size)  # per process: the global batch stays cfg.batch_size
    steps_per_epoch = math.ceil(math.ceil(len(train) / fabric.world_size) / batch_size)
    scheduler = warmup_cosine(optimizer, round(cfg.warmup_epochs * steps_per_epoch), epochs * steps_per_epoch)
    workers = cfg.num_workers if cfg.num_workers is not None else default_workers(augment)
    last_phase_start = max(p.start_epoch for p in strategy.phases_for(len(model.stage_names)))

    history: list[dict] = []
    best_acc, best_epoch, best_state, stale = -1.0, -1, {}, 0
    best_logits = best_labels = None
    trainable: list[str] | None = None
    interrupted = stopped_early = False
    t_start = time.perf_counter()
    penalty = None
    if cfg.l2sp:  # L2-SP: the pretrained weights, captured before the first step, are what w is pulled toward
        from headstart.analysis.drift import l2sp_anchor, l2sp_penalty

        anchor = l2sp_anchor(model)
        penalty = lambda: l2sp_penalty(anchor, cfg.l2sp)  # noqa: E731

    def loaders(start: int):
        """Train and val batches for a frozen prefix [0, start): cached activations where they are fixed."""
        set_train_mode(model, trainable, strategy)  # frozen groups in eval mode before computing anything
        common = dict(pre=pre, device=device, cache_dir=cfg.cache_dir, use_cache=cfg.use_cache)
        val_acts = prefix_activations(model, val.pixels, start, **common, source_key=val.key) if start else None
        val_batch = 64 if val_acts is not None else inference_batch_size(pre.image_size, device)
        val_batches = (DataLoader(TensorDataset(val_acts, val.labels), batch_size=val_batch) if val_acts is not None
                       else DataLoader(PixelDataset(val.pixels, val.labels, eval_transform(pre)), batch_size=val_batch,
                                       pin_memory=device.type == "cuda"))
        # augmented views make the frozen prefix cacheable too
        views = 0 if augment == "none" else cfg.views if cfg.views is not None else default_views(strategy, epochs, augment)
        train_acts = None
        if start and (augment == "none" or views):
            train_acts = prefix_activations(model, train.pixels, start, **common, source_key=train.key,
                                            views=views, augment_transform=train_transform(pre, augment),
                                            augment=augment, seed=cfg.seed)
        if train_acts is not None:
            dataset = (ViewsDataset(train_acts, train.labels, generator) if views
                       else TensorDataset(train_acts, train.labels))
            sampler = engine.shard_sampler(dataset, fabric, cfg.seed)
            loader = DataLoader(dataset, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                                generator=generator)
        else:
            dataset = PixelDataset(train.pixels, train.labels, train_transform(pre, augment))
            sampler = engine.shard_sampler(dataset, fabric, cfg.seed)
            loader = DataLoader(dataset, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                                generator=generator, num_workers=workers, persistent_workers=workers > 0,
                                pin_memory=device.type == "cuda")
        return fabric.setup_dataloaders(loader, use_distributed_sampler=False), val_batches

    try:
        with engine.catch_interrupts(), progress_bar(transient=True) as bar:
            epoch_task = bar.add_task(f"{strategy.name}", total=epochs)
            for epoch in range(epochs):
                now = trainable_groups(strategy, model.stage_names, epoch)
                if now != trainable:
                    trainable = now
                    apply_trainable(model, trainable)
                    start = first_trainable_stage(model, trainable)
                    with fabric.rank_zero_first():  # the first process fills the feature cache, the others read it
                        train_batches, val_batches = loaders(start)
                    net = None  # drop the old wrapper: DDP must be rebuilt to see the groups that train now
                    net = fabric.setup_module(model)
                    info(f"epoch {epoch + 1}: training {', '.join(trainable)} "
                         f"({count_params(model, trainable_only=True):,} parameters); frozen prefix: {start} stage groups")
                if isinstance(train_batches.dataset, ViewsDataset):
                    train_batches.dataset.new_epoch()
                t0 = time.perf_counter()
                set_train_mode(model, trainable, strategy)
                lrs = group_lrs(optimizer)
                batch_task = bar.add_task("  train", total=math.ceil(len(train) / fabric.world_size))
                train_loss, train_acc = train_one_epoch(model, net, train_batches, start, pre, optimizer, scheduler,
                                                        fabric, cfg.label_smoothing, bar, batch_task, penalty)
                bar.remove_task(batch_task)
                logits, labels = predict_batches(model, val_batches, start, pre, device)
                val_loss = F.cross_entropy(logits, labels).item()
                val_acc = (logits.argmax(1) == labels).float().mean().item()
                row = {"epoch": epoch + 1, "train_loss": train_loss, "train_accuracy": train_acc,
                       "val_loss": val_loss, "val_accuracy": val_acc, "seconds": time.perf_counter() - t0,
                       "trainable": "+".join(trainable),
                       **{f"lr_{g}": (lrs[g] if g in trainable else 0.0) for g in model.group_names}}
                if monitor is not None and first:
                    row.update(monitor(model, epoch + 1))
                history.append(row)
                improved = val_acc > best_acc
                if improved:
                    best_acc, best_epoch, stale = val_acc, epoch + 1, 0
                    best_logits, best_labels = logits, labels
                    best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                    if on_checkpoint and first:
                        on_checkpoint(best_state, epoch + 1)
                else:
                    stale += 1
                console.print(f"epoch {epoch + 1:>3}/{epochs}  train loss {train_loss:.3f} acc {train_acc:.3f}  "
                              f"val loss {val_loss:.3f} acc {val_acc:.3f}{'  *' if improved else ''}  "
                              f"({row['seconds']:.1f}s)")
                bar.advance(epoch_task)
                if on_epoch and first:
                    on_epoch(history)
                if cfg.patience and stale >= cfg.patience and epoch + 1 > last_phase_start:
                    stopped_early = True
                    info(f"early stop: val accuracy has not improved for {cfg.patience} epochs")
                    break
    except KeyboardInterrupt:
        interrupted = True
        console.print("[bold]interrupted[/]: keeping the best checkpoint so far")
    if not interrupted:
        engine.check_replicas_agree(fabric, model)
    return FitResult(history, best_epoch, best_acc, best_state, interrupted, time.perf_counter() - t_start, stopped_early,
                     val_logits=best_logits, val_labels=best_labels)
