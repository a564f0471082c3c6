"""What fine-tuning forgets, measured every epoch for every stage group.

    drift_<group>   relative weight drift ||w - w0|| / ||w0|| of the group's parameters
    cka_<group>     linear CKA between the pretrained and the current features of the group on a fixed batch
                    of training images (1: the same representation up to rotation and scale; toward 0: another)
    imagenet_top1   the fine-tuned backbone with the original 1000-class head put back: how much of the old
                    task is left (on a capped subset of a folder of ImageNet synset folders, if one is given)

A pretrained copy of the backbone (the reference) is kept aside: its weights are w0, its features the
"before", its head the old task. The monitor is a plain callable `monitor(model, epoch) -> dict` that
`train.fit` merges into each history row; it warns, with the fix, when early stage groups lose their
pretrained features (the "lr = 0.01 on every layer" mistake).

Its cost is bounded and visible: a call forwards a fixed sample (at most PROBE_BATCH training images and
IMAGENET_IMAGES ImageNet images, whatever the data's size), and the monitor measures on epoch 1, every k-th epoch
after it and the last planned epoch, with k chosen so that its forward passes stay within MONITOR_SHARE of the
training's (`monitor_every`); the other epochs' history rows hold NaN in its columns (not measured: every row
keeps the same columns, and numeric code skips or propagates NaN instead of failing on a blank). Its seconds are recorded per
epoch (history `monitor_seconds`) and per run (run.json `monitor_seconds`, `forgetting.monitored_epochs`), apart
from `train_seconds`.

L2-SP (Li et al., 2018) is the matching remedy: `train.l2sp_penalty` adds alpha/2 * ||w - w0||^2 over the trainable
backbone parameters to the loss, pulling them toward the pretrained weights instead of toward zero.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from headstart.backbones import StagedModel, load_backbone
from headstart.cache import decode_images
from headstart.console import warn
from headstart.data import imagenet_images
from headstart.features import eval_view, inference_batch_size, pooled_stage_outputs
from headstart.precision import autocast, resolve_precision
from headstart.transforms import Preprocessing, eval_transform, normalize_batch

PROBE_BATCH = 64  # training images whose features are compared with the pretrained ones (CKA)
IMAGENET_IMAGES = 100  # capped old-task subset: on a CPU its forward pass costs about as much as 100 train steps
CKA_POOL = 4  # feature maps are average-pooled to 4x4 before CKA: keeps where things are, at little memory
# An early stage group whose weights moved more than 1% AND whose features fell below 0.95 CKA: pretrained
# features are being destroyed. Measured on hymenoptera at 128px (efficientnet_lite0, full, lr 0.01 on every
# layer): epoch 1 stage2 drift 1.9% / CKA 0.95, stage3 2.8% / 0.88; with the default discriminative LRs the
# stem trains at 2e-4 * 0.6^7 = 6e-6 and moves ~1000x less. Drift alone is not enough (a random-init test
# model moves without changing what it computes); CKA alone is not either (in `full`, BatchNorm running stats
# adapt to a shifted domain, which changes features without any learning rate at all).
CKA_WARN = 0.95
DRIFT_WARN = 0.01
DEFAULT_PROBE_FOLDERS = ("../shared/data/imagenet-samples/val",)
# The monitor's forward passes, at most this share of the training's. Its sample is fixed (PROBE_BATCH +
# IMAGENET_IMAGES = 164 images per call), so on small data it would otherwise cost a lot: on hymenoptera (195
# training images) one call is 164 forward passes against ~585 forward-pass equivalents of a training epoch.
MONITOR_SHARE = 0.1
STEP_COST = 3  # a training step's forward + backward pass costs about three forward passes


def monitor_every(images_per_call: int, n_train: int) -> int:
    """Every how many epochs the monitor measures, so that its forward passes stay within MONITOR_SHARE of the
    training's (STEP_COST forward passes per training image and epoch)."""
    return max(1, math.ceil(images_per_call / (MONITOR_SHARE * STEP_COST * max(1, n_train))))


def monitored_epochs(epochs: int, every: int) -> list[int]:
    """Epoch 1 (the warning comes early), every `every`-th after it, and the last planned one (run.json's final)."""
    return sorted({*range(1, epochs + 1, every), epochs})


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA (Kornblith et al., 2019) of two representations of the same N examples (N x D1, N x D2),
    computed from N x N Gram matrices: cheap when D is large."""
    x = x.double().flatten(1)
    y = y.double().flatten(1)
    x = x - x.mean(0)
    y = y - y.mean(0)
    k, l = x @ x.T, y @ y.T
    denom = k.norm() * l.norm()
    return float((k * l).sum() / denom) if denom > 0 else 0.0


def relative_drift(current: torch.nn.Module, reference: torch.nn.Module) -> float:
    """||w - w0|| / ||w0|| over all parameters of a group (buffers such as BN running stats excluded)."""
    diff = ref = 0.0
    for p, p0 in zip(current.parameters(), reference.parameters()):
        diff += (p.detach().float().cpu() - p0.detach().float()).pow(2).sum().item()
        ref += p0.detach().float().pow(2).sum().item()
    return (diff / ref) ** 0.5 if ref > 0 else 0.0


def model_device(model: StagedModel) -> torch.device:
    return next(model.parameters()).device


def cka_features(model: StagedModel, pixels: np.ndarray, pre: Preprocessing, precision: str = "fp32") -> list[torch.Tensor]:
    """Every stage group's output, average-pooled to CKA_POOL x CKA_POOL: keeps where things are, at little memory.
    `feature_map` puts any layout on a grid first (a ViT's patch tokens, Swin's channels-last maps); `precision` is
    the one requested (fp32 | bf16 | auto), resolved for the device `model` is on."""
    return pooled_stage_outputs(model, pixels, pre,
                                lambda act: F.adaptive_avg_pool2d(model.feature_map(act).float(), CKA_POOL),
                                precision=resolve_precision(precision, model_device(model)))


class ForgettingMonitor:
    """`monitor(model, epoch)` -> {drift_<g>, cka_<g>, imagenet_top1} for every stage group; warns once."""

    def __init__(self, reference: StagedModel, probe_pixels: np.ndarray, imagenet: tuple[np.ndarray, torch.Tensor] | None = None,
                 l2sp: float = 0.0, precision: str = "fp32", epochs: int | None = None, every: int = 1):
        self.reference = reference.eval().requires_grad_(False)
        self.l2sp = l2sp  # only to word the warning's fix
        self.precision = precision  # as requested (fp32 | bf16 | auto): resolved for the device of each forward pass
        self.pre = reference.preprocessing
        self.probe = np.asarray(probe_pixels[:PROBE_BATCH])
        self.before = cka_features(reference, self.probe, self.pre, precision)
        self.imagenet = None
        self.imagenet_top1_pretrained = None
        if imagenet is not None and reference.num_classes == 1000:
            self.imagenet = (eval_transform(self.pre)(eval_view(imagenet[0])), imagenet[1])
            self.imagenet_top1_pretrained = self._imagenet_top1(reference)
        self.warnings: list[str] = []
        # which epochs it measures (`monitored_epochs`); None: every epoch it is called on
        self.epochs = monitored_epochs(epochs, every) if epochs else None

    @property
    def images_per_call(self) -> int:
        """Images one call forwards through the backbone: the fixed CKA sample and the capped ImageNet subset."""
        return len(self.probe) + (0 if self.imagenet is None else len(self.imagenet[1]))

    @torch.no_grad()
    def _imagenet_top1(self, model: StagedModel) -> float:
        """The current backbone's pooled features through the original ImageNet classifier."""
        model.eval()
        device = model_device(model)
        precision = resolve_precision(self.precision, device)
        fc = self.reference.head.to(device)  # on pooled features: the original dropout (off) and classifier
        images, labels = self.imagenet
        correct, step = 0, inference_batch_size(self.pre.image_size, device)
        for i in range(0, len(images), step):
            x = normalize_batch(images[i : i + step].to(device), self.pre)
            with autocast(precision, device):
                features = model.head.features(model.forward_to(x, len(model.stages)))
            logits = fc(features.float())
            correct += (logits.argmax(1).cpu() == labels[i : i + step]).sum().item()
        self.reference.head.cpu()
        return correct / len(labels)

    def __call__(self, model: StagedModel, epoch: int) -> dict:
        if self.epochs is not None and epoch not in self.epochs:
            return self.not_measured(model)
        after = cka_features(model, self.probe, self.pre, self.precision)
        row = {}
        for k, name in enumerate(model.stage_names):
            row[f"drift_{name}"] = relative_drift(model.group(name), self.reference.group(name))
            row[f"cka_{name}"] = linear_cka(self.before[k], after[k])
        if self.imagenet is not None:
            row["imagenet_top1"] = self._imagenet_top1(model)
        self._check(model, epoch, row)
        return row

    @staticmethod
    def measured(row: dict) -> bool:
        """Whether a history row holds the monitor's measurements (not an epoch it skipped)."""
        values = [float(v) for k, v in row.items() if k.startswith("cka_") and v not in (None, "")]
        return bool(values) and not math.isnan(values[0])

    def not_measured(self, model: StagedModel) -> dict:
        """The row of an epoch it skips: its columns, NaN."""
        names = [f"{kind}_{g}" for g in model.stage_names for kind in ("drift", "cka")]
        return dict.fromkeys(names + (["imagenet_top1"] if self.imagenet is not None else []), math.nan)

    def _check(self, model: StagedModel, epoch: int, row: dict) -> None:
        if not self.warnings:
            message = forgetting_warning(row, model.stage_names, epoch, self.l2sp)
            if message:
                self.warnings.append(message)
                warn(message)

    def summary(self) -> dict:
        return {"imagenet_top1_pretrained": self.imagenet_top1_pretrained,
                "imagenet_images": None if self.imagenet is None else len(self.imagenet[1]),
                "probe_batch": len(self.probe), "images_per_call": self.images_per_call,
                "monitored_epochs": self.epochs, "warnings": self.warnings}


def forgetting_warning(row: dict, stage_names: list[str], epoch: int, l2sp: float = 0.0) -> str | None:
    """The warning, with the fix, if the early half of the stage groups (the most general features, which
    fine-tuning should barely move) moved and lost their pretrained features; else None. A plain function of
    one history row, so it can be applied to any history.csv."""
    early = stage_names[: max(1, len(stage_names) // 2)]
    hit = [g for g in early if float(row[f"cka_{g}"]) < CKA_WARN and float(row[f"drift_{g}"]) > DRIFT_WARN]
    if not hit:
        return None
    worst = min(hit, key=lambda g: float(row[f"cka_{g}"]))
    when = "in the first epoch" if epoch == 1 else f"by epoch {epoch}"
    return (f"the learning rate is destroying pretrained features: early stage groups ({', '.join(hit)}) changed "
            f"{when} ({worst}: CKA {float(row[f'cka_{worst}']):.2f} with the pretrained features, weights moved "
            f"{100 * float(row[f'drift_{worst}']):.1f}%). Fix: lower --lr (the default 2e-4 for the top stage group, "
            "with --lr-decay 0.6 so that early groups move least), or use --strategy lp-ft, or "
            + (f"raise --l2sp above {l2sp:g}" if l2sp else "add --l2sp 1.0"))


def imagenet_probe_folder(folder: str | None) -> Path | None:
    """The folder of ImageNet synset folders for the old-task top-1: the one given ("none" turns it off), else
    the first default that exists here, else None."""
    if folder is not None:
        return None if folder.lower() in ("", "none") else Path(folder)
    return next((Path(f) for f in DEFAULT_PROBE_FOLDERS if Path(f).is_dir()), None)


def build_monitor(cfg, train_pixels: np.ndarray, pre: Preprocessing, seed: int = 0,
                  epochs: int | None = None) -> ForgettingMonitor:
    """A monitor for a run of `epochs` epochs: a pretrained reference copy of `cfg.model`, a fixed probe batch drawn
    (seeded) from the training images, the capped ImageNet subset if a probe folder is found, and the epochs it
    measures (`monitor_every`)."""
    reference = load_backbone(cfg.model, weights=cfg.weights)
    reference.preprocessing = pre
    pick = np.sort(np.random.default_rng(seed).permutation(len(train_pixels))[:PROBE_BATCH])
    imagenet = None
    folder = imagenet_probe_folder(cfg.monitor_folder)
    if folder is not None:
        images = imagenet_images(folder)
        images = images.subset(np.linspace(0, len(images) - 1, min(IMAGENET_IMAGES, len(images))).astype(int).tolist())
        decoded = decode_images(images, pre, cfg.cache_dir, cfg.use_cache, label="decode ImageNet probe")
        imagenet = (decoded.pixels, torch.tensor([images.labels[i] for i in decoded.kept]))
    per_call = len(pick) + (0 if imagenet is None else len(imagenet[1]))
    return ForgettingMonitor(reference, np.asarray(train_pixels[pick]), imagenet, l2sp=cfg.l2sp,
                             precision=cfg.precision, epochs=epochs,
                             every=monitor_every(per_call, len(train_pixels)))
