"""The training loop: one explicit loop that every strategy runs.

    for epoch:
        trainable = strategy's groups for this epoch        (phases: linear, partial, gradual, lp-ft ...)
        requires_grad and BN mode follow it                 (frozen BatchNorm stays in eval mode)
        if the frozen prefix changed: recompute its cached activations, wrap the model anew for the engine
        train_one_epoch -> evaluate -> history row -> best checkpoint -> early stopping
            (best = val accuracy, or val balanced accuracy when the training classes are imbalanced)

The engine (`engine.py`, Lightning Fabric) decides where this runs: one device, or N data-parallel processes,
each on its shard of the training images; the loop reads the same either way.

Batches are either uint8 images (normalised here, on the device, then pushed through the frozen prefix
without a graph) or cached prefix activations; `forward_batch` tells them apart by dtype.

`cfg.precision` (precision.py) decides the forward passes' number format: bf16 autocast for the frozen prefix and
validation ("inference") and for the training steps' forward pass ("training") where the hardware has bf16 and
parity was measured; the loss, the gradients and the optimizer stay fp32.
"""

from __future__ import annotations

import math
import os
import random
import time
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset, WeightedRandomSampler

from headstart.backbones import StagedModel, count_params
from headstart import engine
from headstart.console import console, info
from headstart.errors import HeadstartError
from headstart.features import inference_batch_size, prefix_activations
from headstart.precision import autocast, precision_plan
from headstart.progress import progress_bar
from headstart.stats import is_imbalanced
from headstart.strategies import (
    Strategy,
    apply_trainable,
    get_strategy,
    parameter_groups,
    set_train_mode,
    trainable_groups,
    trains_batchnorm,
    unfreeze_epoch,
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
    unfreeze_warmup_epochs: float = 0.0  # a group that unfreezes mid-run warms up again over this many epochs
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
    # fp32 | bf16 | auto: the number format of forward passes, per use (precision.py); part of what a run computes
    precision: str = "auto"
    # images per forward/backward pass; the optimizer still steps once per batch (gradients add up). None: automatic
    # (`micro_batch_size`), 0: the whole batch at once. Memory, not results: the same step up to summation order.
    micro_batch: int | None = None
    # Where BatchNorm trains (scratch, --train-bn): the batch goes through in parts of this many images, each part
    # normalised with its own statistics ("ghost" batch norm, Hoffer et al. 2017): a quarter of the activation memory
    # and faster per image on the CPU at 224 px (bench/ghost_bn.py), but not the whole batch's step. None: automatic
    # (`ghost_batch_norm_size`: parts only where the batch exceeds the micro-batch budget), 0: the whole batch.
    ghost_batch_norm: int | None = None
    # issue #4 (analysis): forgetting
    l2sp: float = 0.0  # > 0: alpha of the L2-SP penalty alpha/2 ||w - w0||^2 on trainable backbone weights
    # imbalanced training classes: weighted (class-weighted loss), sampler (class-balanced batches), none;
    # auto = BALANCE_AUTO when the classes are imbalanced (stats.is_imbalanced), none otherwise
    balance: str = "auto"
    monitor_folder: str | None = None  # ImageNet synset folders for the old-task top-1 (None: default if present)
    # where a run is kept, not what it computes
    resume: bool = False  # continue from the run directory's resume point, if it has one
    keep_checkpoints: bool = False  # keep the resume point after the run finishes

    def to_dict(self) -> dict:
        return asdict(self)


def check_ghost_batch_norm(cfg: TrainConfig) -> None:
    """One run asked for ghost batch norm: refuse a value or a strategy it cannot apply to, rather than ignore it.
    (compare passes it to every cell; it applies to those whose BatchNorm trains.)"""
    if not cfg.ghost_batch_norm:  # automatic or off: right for every strategy
        return
    if cfg.ghost_batch_norm < 0:
        raise HeadstartError("--ghost-bn is the number of images per BatchNorm batch: give 1 or more (0: the whole "
                             "batch)")
    if not trains_batchnorm(resolve_strategy(cfg)):
        raise HeadstartError(f"--ghost-bn applies where BatchNorm trains, and {cfg.strategy} keeps the pretrained "
                             "statistics: drop it, or add --train-bn (scratch always trains them)")


def resolve_strategy(cfg: TrainConfig) -> Strategy:
    """The strategy a config asks for, with the config's overrides (LRs, depth, epochs, BN policy) applied."""
    return get_strategy(cfg.strategy, train_last=cfg.train_last, lr=cfg.lr, head_lr=cfg.head_lr,
                        lr_decay=cfg.lr_decay, epochs=cfg.epochs, augment=cfg.augment,
                        train_bn_stats=None if cfg.freeze_bn is None else not cfg.freeze_bn)


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
    best_val_accuracy: float  # val accuracy of the best epoch (chosen on `select_on`)
    best_state: dict[str, torch.Tensor]
    interrupted: bool = False
    train_seconds: float = 0.0
    stopped_early: bool = False
    notes: list[str] = field(default_factory=list)
    val_logits: torch.Tensor | None = None  # of the best epoch: the final evaluation needs no second forward pass
    val_labels: torch.Tensor | None = None
    monitor_seconds: float = 0.0  # the forgetting monitor's time, not part of train_seconds
    select_on: str = "val_accuracy"  # the history column the best epoch and early stopping follow
    balance: str = "none"  # how training countered imbalanced classes (`resolve_balance`)


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


BALANCE_MODES = ("auto", "weighted", "sampler", "none")
BALANCE_AUTO = "sampler"  # what `auto` does on imbalanced classes: the better on val (bench/imbalance.py, docs/analysis.md)


def resolve_balance(balance: str, counts: list[int], world_size: int = 1) -> str:
    """How a run counters imbalanced training classes: `auto` is BALANCE_AUTO when they are imbalanced
    (`stats.is_imbalanced`) and none otherwise; an explicit mode is kept as it is. The sampler draws the batches
    of one process, so `auto` weighs the loss instead with several (`--devices`), and an explicit sampler is refused."""
    if balance not in BALANCE_MODES:
        raise HeadstartError(f"--balance must be one of {', '.join(BALANCE_MODES)}, got {balance!r}")
    if balance == "sampler" and world_size > 1:
        raise HeadstartError("--balance sampler draws the batches of one process; with --devices N use "
                             "--balance weighted (or auto)")
    if balance == "auto":
        if not is_imbalanced(counts):
            return "none"
        return "weighted" if BALANCE_AUTO == "sampler" and world_size > 1 else BALANCE_AUTO
    return balance


def selection_metric(counts: list[int]) -> str:
    """The history column that chooses the best epoch and stops early: val balanced accuracy (mean per-class
    recall) when the training classes are imbalanced, where plain accuracy would reward leaning toward the large
    classes; val accuracy otherwise (on balanced classes the two agree closely, and accuracy is the one people know)."""
    return "val_balanced_accuracy" if is_imbalanced(counts) else "val_accuracy"


def class_weights(counts: list[int]) -> torch.Tensor:
    """N / (K · n_c) per class: in the weighted loss every class counts as much as in a balanced set (a class
    without images gets 0)."""
    n = torch.tensor(counts, dtype=torch.float32)
    present = n > 0
    return torch.where(present, n.sum() / (present.sum() * n.clamp(min=1)), torch.zeros_like(n))


def balanced_sampler(labels: torch.Tensor, counts: list[int], generator: torch.Generator) -> WeightedRandomSampler:
    """Class-balanced batches: each draw picks a class uniformly, then an image of it (with replacement), as many
    draws per epoch as there are training images. Draws from the run's generator, so a seed repeats them.
    (The epoch's train accuracy is then measured on these balanced draws.)"""
    per_image = (1.0 / torch.tensor(counts, dtype=torch.float64).clamp(min=1))[labels]
    return WeightedRandomSampler(per_image, num_samples=len(labels), replacement=True, generator=generator)


def balanced_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean recall over the classes present in `labels`: scikit-learn's, as evaluate.classification_metrics uses."""
    from sklearn.metrics import balanced_accuracy_score  # imported when a run first validates, not at start-up

    if len(labels) == 0:
        return 0.0
    with warnings.catch_warnings():  # a prediction of a class val lacks is an error counted, not news each epoch
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return float(balanced_accuracy_score(labels.cpu().numpy(), logits.argmax(1).cpu().numpy()))


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


def l2sp_anchor(model: StagedModel) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
    """Every backbone parameter with a frozen copy of its starting (pretrained) value. The head is left out:
    it is new, so there is nothing to stay close to."""
    return [(p, p.detach().clone()) for name in model.stage_names for p in model.group(name).parameters()]


def l2sp_penalty(anchor: list[tuple[torch.nn.Parameter, torch.Tensor]], alpha: float) -> torch.Tensor:
    """alpha/2 * sum ||w - w0||^2 over the parameters that currently train."""
    terms = [(p - p0).pow(2).sum() for p, p0 in anchor if p.requires_grad]
    return alpha / 2 * torch.stack(terms).sum() if terms else torch.zeros(())


def make_optimizer(name: str, groups: list[dict]) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(groups)
    if name == "sgd":
        return torch.optim.SGD(groups, momentum=0.9, nesterov=True)
    raise ValueError(f"optimizer must be adamw or sgd, got {name!r}")


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """The schedule's multiplier of a group's LR after `step` optimizer steps: a linear warm-up from 1%, then
    cosine decay to zero."""
    if warmup_steps > 0 and total_steps > 1:
        warmup_steps = min(warmup_steps, total_steps - 1)
        if step < warmup_steps:
            return 0.01 + 0.99 * step / warmup_steps
        step, total_steps = step - warmup_steps, total_steps - warmup_steps
    return 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(1, total_steps)))


def unfreeze_ramp(step: int, unfreezes_at: int, ramp_steps: int) -> float:
    """A group that unfreezes mid-run (gradual, lp-ft) would otherwise take full steps at once with an empty
    optimizer state; this warms it up again, from 1% over `ramp_steps` steps."""
    if ramp_steps <= 0 or unfreezes_at <= 0 or step >= unfreezes_at + ramp_steps:
        return 1.0
    return 0.01 + 0.99 * max(0, step - unfreezes_at) / ramp_steps


def lr_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                 unfreeze_steps: dict[str, int], ramp_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """One multiplier per optimizer group, stepped per batch; a closed form of the step count, so a resumed
    run gets the same LRs from the scheduler's saved step alone."""
    def factor(group: str):
        return lambda step: lr_factor(step, warmup_steps, total_steps) * unfreeze_ramp(
            step, unfreeze_steps.get(group, 0), ramp_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor(g["group"]) for g in optimizer.param_groups])


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    return {g["group"]: g["lr"] for g in optimizer.param_groups}


def eval_loader(split: Split, pre: Preprocessing, device: torch.device) -> DataLoader:
    """Batches of the evaluation view (centre crop) of decoded images: the one recipe for every pass without
    gradients over a split (validation, evaluation, a run's final figures)."""
    return DataLoader(PixelDataset(split.pixels, split.labels, eval_transform(pre)),
                      batch_size=inference_batch_size(pre.image_size, device), pin_memory=device.type == "cuda")


MICRO_BATCH_PIXELS = 8 * 224 * 224  # a training micro-batch holds at most 8 images' worth of 224 px activations


def batchnorm_in_training(model: torch.nn.Module) -> bool:
    """Whether some BatchNorm layer normalises with the batch's own statistics now (is in training mode)."""
    return any(m.training for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))


def ghost_batch_norm_size(requested: int | None, batch_per_process: int, image_size: int) -> int | None:
    """Images per part of a batch where BatchNorm trains (each part normalised with its own statistics), or None for
    the whole batch. `requested` None is automatic: the micro-batch budget's number of images (MICRO_BATCH_PIXELS,
    8 at 224 px), so a run splits its batch only where a whole one would keep more activations than that — 224-px
    runs do (chosen on val: bench/ghost_bn.py, better and 1.4x faster there), runs at 112 px or less keep their
    batch of 32 whole; the automatic parts are of equal size (11 + 11 + 10 at 160 px). 0 is off."""
    if requested is None:
        budget = max(1, MICRO_BATCH_PIXELS // (image_size * image_size))
        requested = math.ceil(batch_per_process / math.ceil(batch_per_process / budget))
    return requested if 0 < requested < batch_per_process else None


def batchnorm_parts(cfg: TrainConfig, strategy: Strategy, image_size: int) -> int | None:
    """Images per BatchNorm part of this run's training batches (ghost batch norm), or None where its BatchNorm
    trains on whole batches or not at all: what config.json records and compare holds finished runs to, since
    the same request (automatic) means other parts at another image size."""
    if not trains_batchnorm(strategy):
        return None
    return ghost_batch_norm_size(cfg.ghost_batch_norm, math.ceil(cfg.batch_size / cfg.devices), image_size)


def micro_batch_size(cfg: TrainConfig, model: torch.nn.Module, image_size: int, world_size: int) -> int | None:
    """Images per forward/backward pass, or None for the whole batch. Splitting a batch and adding the parts'
    gradients gives the same optimizer step only where no layer normalises with the batch's own statistics, so
    it is used only when every BatchNorm is in eval mode (the default of the pretrained strategies; not `scratch`
    or `--train-bn`) and in one process (with several, each already holds batch / processes). Automatic: as many
    images as MICRO_BATCH_PIXELS allows at this image size — a full training step of Lite0 at 224 px on a batch of
    32 keeps ~3.9 GB of activations for backward; in micro-batches of 8, a quarter of that. Where BatchNorm trains,
    the parts are ghost batch norm's (`ghost_batch_norm_size`), each normalised with its own statistics."""
    if batchnorm_in_training(model):  # parts normalise with their own statistics: ghost batch norm, another step
        return ghost_batch_norm_size(cfg.ghost_batch_norm, math.ceil(cfg.batch_size / world_size), image_size)
    if cfg.micro_batch == 0 or world_size > 1:
        return None
    micro = cfg.micro_batch or max(1, MICRO_BATCH_PIXELS // (image_size * image_size))
    return micro if micro < cfg.batch_size else None


def train_one_epoch(model, net, batches, start, pre, optimizer, scheduler, fabric, label_smoothing, bar=None, task=None,
                    penalty=None, class_weights=None, precision: str = "fp32", micro_batch: int | None = None):
    """One pass over this process's `batches`; returns loss and accuracy over every process's images.
    `penalty()` (e.g. L2-SP) is added to the loss that is minimised, and `class_weights` weigh it per class
    (`--balance weighted`); the reported loss is the plain cross-entropy, so runs with and without them compare.
    `precision` (resolved) is the forward pass's; the loss is computed in fp32 from fp32 logits. `micro_batch`
    (`micro_batch_size`) splits each batch into forward/backward passes of that many images whose gradients add up
    to the whole batch's: each part's loss is its summed cross-entropy over the whole batch's normaliser."""
    device = fabric.device
    weights = class_weights.to(device) if class_weights is not None else None
    total_loss, correct, seen = 0.0, 0, 0
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        normaliser = weights[y].sum() if weights is not None else torch.tensor(float(len(y)), device=device)
        parts = [slice(i, i + micro_batch) for i in range(0, len(y), micro_batch)] if micro_batch else [slice(None)]
        logits = []
        for k, part in enumerate(parts):
            with autocast(precision, device):
                part_logits = forward_batch(model, x[part], start, pre, net)
            loss = F.cross_entropy(part_logits.float(), y[part], weight=weights, label_smoothing=label_smoothing,
                                   reduction="sum") / normaliser
            last = k == len(parts) - 1
            fabric.backward(loss + penalty() if penalty is not None and last else loss)  # N processes: averaged
            logits.append(part_logits.detach())
        logits = torch.cat(logits)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)  # reported: plain, whole batch
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
def predict_batches(model, batches, start, pre, device, precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (fp32) and labels for every batch, with the model in eval mode, the forward pass in `precision`
    (resolved: fp32 or bf16)."""
    model.eval()
    all_logits, all_labels = [], []
    for x, y in batches:
        with autocast(precision, device):
            logits = forward_batch(model, x.to(device, non_blocking=True), start, pre)
        all_logits.append(logits.float().cpu())
        all_labels.append(y)
    return torch.cat(all_logits), torch.cat(all_labels)


# ----------------------------------------------------------------------------------------------- the loop
@dataclass
class RunPlan:
    """What a run will do, derived once from the config, the strategy, the model and the data."""

    epochs: int
    augment: str
    views: int
    batch_size: int  # per process: the global batch is cfg.batch_size
    steps_per_epoch: int
    workers: int
    last_phase_start: int  # early stopping waits for the last phase to begin
    unfreeze_steps: dict[str, int]  # optimizer step at which each group that unfreezes mid-run starts training
    class_counts: list[int] = field(default_factory=list)  # training images per class
    balance: str = "none"  # weighted | sampler | none (`resolve_balance`)
    select_on: str = "val_accuracy"  # `selection_metric`
    precision: dict[str, str] = field(default_factory=lambda: {"inference": "fp32", "training": "fp32"})


def plan_run(model: StagedModel, strategy: Strategy, n_train: int, cfg: TrainConfig, world_size: int,
             class_counts: list[int] | None = None, device: torch.device | str = "cpu") -> RunPlan:
    epochs = cfg.epochs or strategy.epochs
    augment = cfg.augment or strategy.augment
    views = 0 if augment == "none" else cfg.views if cfg.views is not None else default_views(strategy, epochs, augment)
    batch_size = math.ceil(cfg.batch_size / world_size)
    steps = math.ceil(math.ceil(n_train / world_size) / batch_size)
    phases = strategy.phases_for(len(model.stage_names))
    unfreeze = {name: epoch * steps for name in model.group_names
                if (epoch := unfreeze_epoch(strategy, model.stage_names, name)) is not None}
    counts = list(class_counts or [])
    balance = resolve_balance(cfg.balance, counts, world_size)
    return RunPlan(epochs, augment, views, batch_size, steps,
                   cfg.num_workers if cfg.num_workers is not None else default_workers(augment),
                   max(p.start_epoch for p in phases), unfreeze, counts, balance, selection_metric(counts),
                   precision_plan(cfg.precision, device))


@dataclass
class ActivePhase:
    """The groups that train now, and the batches that feed them: rebuilt whenever a strategy's phase changes."""

    trainable: list[str]
    start: int  # stage groups [0, start) are a frozen prefix
    train_batches: DataLoader
    val_batches: DataLoader
    net: torch.nn.Module  # the model as the engine wraps it for training (DDP with several processes)


def enter_phase(model: StagedModel, strategy: Strategy, trainable: list[str], epoch: int, train: Split, val: Split,
                cfg: TrainConfig, plan: RunPlan, fabric, generator: torch.Generator) -> ActivePhase:
    """Freeze and unfreeze, put frozen groups in eval mode, and build the batches: cached activations of the
    frozen prefix where they stay fixed (no augmentation, or a pool of augmented views), images otherwise."""
    apply_trainable(model, trainable)
    set_train_mode(model, trainable, strategy)  # frozen groups in eval mode before computing anything
    start = first_trainable_stage(model, trainable)
    device, pre = fabric.device, model.preprocessing
    common = dict(pre=pre, device=device, cache_dir=cfg.cache_dir, use_cache=cfg.use_cache,
                  precision=plan.precision["inference"])
    with fabric.rank_zero_first():  # the first process fills the feature cache, the others read it
        val_acts = prefix_activations(model, val.pixels, start, **common, source_key=val.key) if start else None
        train_acts = None
        if start and (plan.augment == "none" or plan.views):
            train_acts = prefix_activations(model, train.pixels, start, **common, source_key=train.key,
                                            views=plan.views, augment_transform=train_transform(pre, plan.augment),
                                            augment=plan.augment, seed=cfg.seed)
    val_batches = (DataLoader(TensorDataset(val_acts, val.labels), batch_size=64) if val_acts is not None
                   else eval_loader(val, pre, device))
    if train_acts is not None:
        dataset = ViewsDataset(train_acts, train.labels, generator) if plan.views else TensorDataset(train_acts, train.labels)
        workers = 0  # cached tensors: nothing to do in a worker
    else:
        dataset = PixelDataset(train.pixels, train.labels, train_transform(pre, plan.augment))
        workers = plan.workers
    sampler = (balanced_sampler(train.labels, plan.class_counts, generator) if plan.balance == "sampler"
               else engine.shard_sampler(dataset, fabric, cfg.seed))
    # Workers are started anew each epoch (not persistent): their random state then follows from the
    # loader's generator alone, which a resume point saves, so a resumed run augments exactly as it would have.
    loader = DataLoader(dataset, batch_size=plan.batch_size, shuffle=sampler is None, sampler=sampler,
                        generator=generator, num_workers=workers, pin_memory=device.type == "cuda")
    net = fabric.setup_module(model)  # wrapped anew: DDP must see the groups that train now
    info(f"epoch {epoch + 1}: training {', '.join(trainable)} ({count_params(model, trainable_only=True):,} parameters); "
         f"frozen prefix: {start} stage groups")
    return ActivePhase(trainable, start, fabric.setup_dataloaders(loader, use_distributed_sampler=False), val_batches, net)


@dataclass
class LoopState:
    """Everything a run has done so far that the rest of it depends on: what a resume point saves."""

    history: list[dict] = field(default_factory=list)
    select_on: str = "val_accuracy"  # the history column that decides the best epoch (`selection_metric`)
    best_score: float = -1.0  # its best value so far
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    best_logits: torch.Tensor | None = None
    best_labels: torch.Tensor | None = None
    stale: int = 0  # epochs since the last improvement
    train_seconds: float = 0.0  # training and validation, summed over epochs (and over resumed sessions)
    monitor_seconds: float = 0.0  # the forgetting monitor, apart: it is not the strategy's own cost

    def record(self, row: dict, model: StagedModel, logits: torch.Tensor, labels: torch.Tensor) -> bool:
        """Add an epoch's row; keep the weights and val logits if the selection metric improved. True if it did."""
        self.history.append(row)
        if row[self.select_on] <= self.best_score:
            self.stale += 1
            return False
        self.best_score, self.best_epoch, self.stale = row[self.select_on], row["epoch"], 0
        self.best_logits, self.best_labels = logits, labels
        self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return True


def random_state(generator: torch.Generator) -> dict:
    """Every random number generator a run draws from (torch's, numpy's and Python's global ones, and the
    generator behind shuffling, views and loader workers), as tensors and plain values."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "loader": generator.get_state(), "python": random.getstate(),
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss,
                      "cached": cached},
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_random_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["loader"])
    random.setstate(_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value):
    """random.setstate wants the tuples that a round trip through a checkpoint turned into lists."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def resume_point(state: LoopState, model: StagedModel, optimizer, scheduler, generator: torch.Generator) -> dict:
    """A run after a whole epoch, complete enough that continuing from it gives the very run that was not stopped."""
    return {"version": 1, "epochs_done": len(state.history), "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "random": random_state(generator), "loop": {k: v for k, v in state.__dict__.items()}}


def resume_from(point: dict, model: StagedModel, optimizer, scheduler, generator: torch.Generator) -> LoopState:
    model.load_state_dict(point["model"])
    optimizer.load_state_dict(point["optimizer"])
    scheduler.load_state_dict(point["scheduler"])
    restore_random_state(point["random"], generator)
    return LoopState(**point["loop"])


def should_stop_early(state: LoopState, cfg: TrainConfig, plan: RunPlan) -> bool:
    """No val improvement for `patience` epochs, once the strategy's last phase has begun."""
    return bool(cfg.patience) and state.stale >= cfg.patience and len(state.history) > plan.last_phase_start


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
    resume: dict | None = None,
) -> FitResult:
    """Train `model` under `strategy`; keep the best-on-val weights. Ctrl-C stops cleanly after the batch.

    The best epoch is the one with the best val accuracy, or val balanced accuracy when the training classes
    are imbalanced (`selection_metric`); `cfg.balance` counters the imbalance in training (`resolve_balance`).
    `on_checkpoint(state, epoch)` is called whenever that improves (the run directory saves it at
    once, so an interruption or a crash loses nothing); `on_epoch(history, resume_point)` after every epoch, with
    what `resume=` takes to continue the run exactly from there. `monitor(model, epoch) -> dict` (e.g.
    `analysis.drift.ForgettingMonitor`) runs after evaluation; its values join the epoch's history row. With
    several processes (`cfg.devices`), only the first calls the callbacks. `fabric` is the engine that
    `pipeline.train` started (default: one device, `cfg.device`).
    """
    fabric = fabric or engine.start(cfg.device)
    first = fabric.is_global_zero  # the process that writes and reports
    torch.manual_seed(cfg.seed)  # the run's randomness (dropout, augmentation) follows its own seed only
    generator = torch.Generator().manual_seed(cfg.seed)
    counts = torch.bincount(train.labels, minlength=model.num_classes).tolist()
    plan = plan_run(model, strategy, len(train), cfg, fabric.world_size, counts, fabric.device)
    announce_balance(plan)
    model.to(fabric.device).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg.optimizer, parameter_groups(model, strategy, cfg.weight_decay))
    scheduler = lr_scheduler(optimizer, round(cfg.warmup_epochs * plan.steps_per_epoch),
                             plan.epochs * plan.steps_per_epoch, plan.unfreeze_steps,
                             round(cfg.unfreeze_warmup_epochs * plan.steps_per_epoch))
    penalty = l2sp(model, cfg.l2sp)  # anchored before a resume point loads later weights
    state = resume_from(resume, model, optimizer, scheduler, generator) if resume else LoopState(select_on=plan.select_on)
    weights = class_weights(plan.class_counts) if plan.balance == "weighted" else None
    phase, interrupted, stopped_early = None, False, False
    try:
        with engine.catch_interrupts(), progress_bar(transient=True) as bar:
            epoch_task = bar.add_task(strategy.name, total=plan.epochs, completed=len(state.history))
            for epoch in range(len(state.history), plan.epochs):
                trainable = trainable_groups(strategy, model.stage_names, epoch)
                if phase is None or trainable != phase.trainable:
                    t0 = time.perf_counter()
                    phase = enter_phase(model, strategy, trainable, epoch, train, val, cfg, plan, fabric, generator)
                    state.train_seconds += time.perf_counter() - t0
                row, logits, labels = run_epoch(model, phase, epoch, strategy, optimizer, scheduler, cfg, fabric, bar,
                                                penalty, weights, plan.precision)
                state.train_seconds += row["seconds"]
                if monitor is not None and first:
                    t0 = time.perf_counter()
                    row.update(monitor(model, epoch + 1))
                    row["monitor_seconds"] = time.perf_counter() - t0
                    state.monitor_seconds += row["monitor_seconds"]
                improved = state.record(row, model, logits, labels)
                print_epoch(row, plan.epochs, improved, state.select_on)
                bar.advance(epoch_task)
                if first and improved and on_checkpoint:
                    on_checkpoint(state.best_state, epoch + 1)
                if first and on_epoch:
                    on_epoch(state.history, resume_point(state, model, optimizer, scheduler, generator))
                if should_stop_early(state, cfg, plan):
                    stopped_early = True
                    info(f"early stop: {state.select_on.replace('_', ' ')} has not improved for {cfg.patience} epochs")
                    break
    except KeyboardInterrupt:
        interrupted = True
        console.print("[bold]interrupted[/]: keeping the best checkpoint so far")
    if not interrupted:
        engine.check_replicas_agree(fabric, model)
    best_val_accuracy = state.history[state.best_epoch - 1]["val_accuracy"] if state.best_epoch else -1.0
    return FitResult(state.history, state.best_epoch, best_val_accuracy, state.best_state, interrupted,
                     state.train_seconds, stopped_early, val_logits=state.best_logits, val_labels=state.best_labels,
                     monitor_seconds=state.monitor_seconds, select_on=state.select_on, balance=plan.balance)


def announce_balance(plan: RunPlan) -> None:
    """Say when imbalanced classes change what the run selects on or how it trains."""
    if plan.select_on == "val_accuracy" and plan.balance == "none":
        return
    present = [n for n in plan.class_counts if n > 0]
    how = {"weighted": "a class-weighted loss", "sampler": "class-balanced batches", "none": "no counter-measure"}
    info(f"training classes imbalanced ({max(present)} vs {min(present)} images, "
         f"{max(present) / min(present):.1f}:1): the best epoch is chosen on "
         f"{plan.select_on.replace('_', ' ')}; training uses {how[plan.balance]} (--balance)")


def run_epoch(model, phase: ActivePhase, epoch: int, strategy: Strategy, optimizer, scheduler, cfg: TrainConfig, fabric, bar,
              penalty, class_weights=None, precision: dict[str, str] | None = None) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Train one epoch, then score val: the epoch's history row, and the val logits and labels."""
    t0 = time.perf_counter()
    precision = precision or {"inference": "fp32", "training": "fp32"}
    if isinstance(phase.train_batches.dataset, ViewsDataset):
        phase.train_batches.dataset.new_epoch()
    set_train_mode(model, phase.trainable, strategy)
    lrs = group_lrs(optimizer)  # the LRs the epoch starts with
    task = bar.add_task("  train", total=math.ceil(len(phase.train_batches.dataset) / fabric.world_size))
    micro = micro_batch_size(cfg, model, model.preprocessing.image_size, fabric.world_size)
    train_loss, train_acc = train_one_epoch(model, phase.net, phase.train_batches, phase.start, model.preprocessing,
                                            optimizer, scheduler, fabric, cfg.label_smoothing, bar, task,
                                            penalty=penalty, class_weights=class_weights,
                                            precision=precision["training"], micro_batch=micro)
    bar.remove_task(task)
    logits, labels = predict_batches(model, phase.val_batches, phase.start, model.preprocessing, fabric.device,
                                     precision["inference"])
    row = {"epoch": epoch + 1, "train_loss": train_loss, "train_accuracy": train_acc,
           "val_loss": F.cross_entropy(logits, labels).item(),
           "val_accuracy": (logits.argmax(1) == labels).float().mean().item(),
           "val_balanced_accuracy": balanced_accuracy(logits, labels),
           "seconds": time.perf_counter() - t0, "trainable": "+".join(phase.trainable),
           **{f"lr_{g}": (lrs[g] if g in phase.trainable else 0.0) for g in model.group_names}}
    return row, logits, labels


def print_epoch(row: dict, epochs: int, improved: bool, select_on: str = "val_accuracy") -> None:
    balanced = f" balanced {row['val_balanced_accuracy']:.3f}" if select_on == "val_balanced_accuracy" else ""
    console.print(f"epoch {row['epoch']:>3}/{epochs}  train loss {row['train_loss']:.3f} acc {row['train_accuracy']:.3f}  "
                  f"val loss {row['val_loss']:.3f} acc {row['val_accuracy']:.3f}{balanced}{'  *' if improved else ''}  "
                  f"({row['seconds']:.1f}s)")


def l2sp(model: StagedModel, alpha: float):
    """L2-SP's penalty as a function of the current weights, anchored at the weights the run starts from
    (pretrained; captured before the first step); None when alpha is 0."""
    if not alpha:
        return None
    anchor = l2sp_anchor(model)
    return lambda: l2sp_penalty(anchor, alpha)
