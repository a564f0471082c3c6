"""A fine-tuning strategy chosen from measurements of the data, with hyperparameters and the reasons.

The textbook rule is a 2x2 table: small data & similar domain -> feature extraction; large & similar ->
fine-tune; small & different -> fine-tune the top, or train a linear model on earlier features; large &
different -> fine-tune everything (or train from scratch). Here both axes are measured instead of guessed:

    size        training images per class (and the number of classes, the imbalance)   <- check
    fit         linear-probe accuracy of the frozen features, per stage group            <- probe
    similarity  BatchNorm-statistics similarity to the pretraining data, low / high level <- probe

and the decision is a short list of rules in `decide`, each of which writes the reason it fired in plain
words with the numbers it used. `api.recommend(..., verify=True)` trains the pick and the runner-up for a
few epochs on the same split and seed (`verification_configs`), and says whether the pick held.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from headstart.analysis.check import CheckReport, check_splits
from headstart.analysis.probe import ProbeReport, probe
from headstart.backbones import load_backbone
from headstart.data import DataSplits, load_data
from headstart.strategies import get_strategy, group_learning_rates
from headstart.train import TrainConfig

# The thresholds of the rules, in one place (see `decide`).
FEW_IMAGES = 20  # per class: below this, training any backbone weights overfits
FEATURES_FIT = 0.95  # probe accuracy at which fine-tuning has little left to gain
FEATURES_POOR = 0.80  # probe accuracy below which the top features are the wrong ones for this data
SIMILAR = 0.95  # BatchNorm similarity: the data looks like the pretraining data to these layers
DIFFERENT = 0.85  # ... clearly does not (greyscale, medical, upscaled thumbnails measured 0.7-0.9)
MANY_IMAGES = 300  # per class: enough to move early layers without overfitting
SCRATCH_IMAGES = 2000  # per class, with a far domain and poor features: a randomly initialised net can win

RUNNER_UP = {"linear": "partial", "partial": "linear", "lp-ft": "full", "full": "lp-ft", "gradual": "partial",
             "scratch": "full"}


@dataclass
class Recommendation:
    strategy: str
    reasons: list[str]
    hyperparameters: dict
    runner_up: str
    measurements: dict
    command: str = ""
    verify: dict | None = None
    probe: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def measurements(check: CheckReport, report: ProbeReport) -> dict:
    counts = [n for n in check.counts["train"].values() if n > 0]
    accs = [s.cv_accuracy for s in report.stages]
    return {
        "classes": len(check.classes),
        "images_per_class": statistics.median(counts) if counts else 0,
        "smallest_class": min(counts) if counts else 0,
        "imbalance_ratio": check.imbalance_ratio,
        "probe_accuracy": report.last.cv_accuracy,  # the features a `linear` head would see
        "probe_accuracy_val": report.last.val_accuracy,
        "probe_accuracy_by_stage": dict(zip([s.stage for s in report.stages], accs)),
        "best_stage": report.best.stage,
        "chance": 1 / len(check.classes),
        "low_level_similarity": report.similarity("low"),
        "high_level_similarity": report.similarity("high"),
        "image_size": report.image_size,
        "stages": [s.stage for s in report.stages],
    }


def decide(m: dict) -> tuple[str, int | None, list[str]]:
    """(strategy, train_last for partial, reasons): the rules, in order; the first that applies decides."""
    n, acc, low, high = m["images_per_class"], m["probe_accuracy"], m["low_level_similarity"], m["high_level_similarity"]
    measured_similarity = low is not None and high is not None
    # a model without BatchNorm (ViT, ConvNeXt's LayerNorm) gives no similarity: no rule may treat the data as far
    # from ImageNet on its account, and no reason may quote a figure for it
    low = 1.0 if low is None else low
    high = 1.0 if high is None else high
    last = m["stages"][-1]
    fit = (f"the frozen features of {last} separate your classes {acc:.0%} of the time (linear probe, cross-validated "
           f"on train; chance is {m['chance']:.0%})")
    looks = (f"to the pretrained BatchNorm layers your images look {low:.2f} similar to ImageNet in low-level "
             f"statistics and {high:.2f} in high-level ones (1 = the same)" if measured_similarity else
             "this model has no BatchNorm layers, so how far your images are from ImageNet was not measured: the "
             "probe's accuracies decide alone")
    reasons = []
    if n < FEW_IMAGES:
        reasons += [f"only {n:.0f} training images per class: fine-tuning backbone weights on so few overfits", fit,
                    "train only a new head on the frozen features"]
        return "linear", None, reasons
    if n >= SCRATCH_IMAGES and low < DIFFERENT and high < DIFFERENT and acc < FEATURES_POOR:
        reasons += [f"{n:.0f} images per class is a lot", looks + ": far from ImageNet at every depth", fit,
                    "a randomly initialised network has the data to learn its own features; compare it with `full`"]
        return "scratch", None, reasons
    if acc >= FEATURES_FIT and low >= DIFFERENT:
        reasons += [fit + f": at most {1 - acc:.0%} is left for fine-tuning to gain", looks,
                    f"with {n:.0f} images per class, training backbone weights risks overfitting more than it can gain",
                    "train a new head on the frozen features (fast: features are computed once)"]
        return "linear", None, reasons
    if n >= MANY_IMAGES and low < SIMILAR:
        strategy = "full" if acc < FEATURES_POOR or low < DIFFERENT else "lp-ft"
        reasons += [looks + ": the early layers see a different kind of image, so they need to adapt too", fit,
                    f"{n:.0f} images per class are enough to fine-tune every layer"]
        reasons.append("fine-tune all layers with discriminative learning rates" if strategy == "full" else
                       "first fit the head on frozen features, then fine-tune all layers from that head (LP-FT): a "
                       "random head would send large gradients into the pretrained features in the first epochs")
        return strategy, None, reasons
    k = 1 if measured_similarity and high >= SIMILAR and acc >= FEATURES_POOR else 2
    best, by_stage = m["best_stage"], m["probe_accuracy_by_stage"]
    reasons += [fit + f"; fine-tuning the last {'stage group' if k == 1 else f'{k} stage groups'} is likely to gain",
                looks]
    if best != last:
        reasons.append(f"features of {best} separate the classes better ({by_stage[best]:.0%}) than the last ones: "
                       "the top layers are specialised to ImageNet")
    if n < MANY_IMAGES and k == 2 and acc < FEATURES_POOR:
        reasons.append(f"with {n:.0f} images per class, unfreeze gradually (head first) to keep the pretrained features")
        return "gradual", None, reasons
    reasons.append(f"{n:.0f} images per class: enough for the top of the network, with the early layers frozen")
    return "partial", k, reasons


def hyperparameters(strategy: str, train_last: int | None, m: dict, model: str) -> dict:
    """TrainConfig fields for the pick: the strategy's defaults, adjusted to the measurements."""
    n, low = m["images_per_class"], m["low_level_similarity"] or 1.0
    spec = get_strategy(strategy, train_last=train_last)
    augment = "none" if strategy == "linear" else ("strong" if n < 100 else "light")
    lr_decay = spec.lr_decay
    if strategy in ("full", "lp-ft", "gradual") and low < SIMILAR:
        lr_decay = 0.8  # early layers must adapt to a shifted low-level distribution: decay the LR less
    epochs = spec.epochs if n >= 100 or strategy == "linear" else 15
    hp = {"strategy": strategy, "model": model, "train_last": train_last, "lr": spec.lr, "head_lr": spec.head_lr,
          "lr_decay": lr_decay, "epochs": epochs, "image_size": m["image_size"], "augment": augment}
    rates = group_learning_rates(replace(spec, lr_decay=lr_decay), m["stages"])
    trains = {"linear": 0, "partial": train_last, "scratch": None}.get(strategy)
    hp["group_lrs"] = {g: round(lr, 8) for g, lr in rates.items()
                       if strategy in ("full", "lp-ft", "gradual", "scratch") or g == "head"
                       or (trains and g in m["stages"][-trains:])}
    return hp


def command(data: str, hp: dict, per_class: int | None, classes: list[str] | None = None) -> str:
    parts = ["headstart train", str(data), "--strategy", hp["strategy"], "--model", hp["model"]]
    if hp["train_last"]:
        parts += ["--train-last", str(hp["train_last"])]
    parts += ["--lr-decay", str(hp["lr_decay"]), "--epochs", str(hp["epochs"]), "--image-size", str(hp["image_size"]),
              "--augment", hp["augment"]]
    if per_class:
        parts += ["--per-class", str(per_class)]
    if classes:
        parts += ["--classes", ",".join(classes)]
    return " ".join(parts)


def measure_and_decide(data, *, model: str = "efficientnet_lite0", per_class: int | None = None, classes=None,
              val_fraction: float = 0.2, seed: int = 0, image_size: int | None = None,
              cache_dir=None) -> tuple[Recommendation, DataSplits]:
    """Check (fast) and probe the data, and decide; also the splits it measured, for a verification run.

    `data` may be a `DataSplits` already cut (the benchmark hands recommend the very split `compare` trains on, so
    that the probe sees only the train and val images and never the test images the strategies are scored on)."""
    splits = data if isinstance(data, DataSplits) else load_data(
        data, val_fraction=val_fraction, seed=seed, classes=classes, per_class=per_class)
    check = check_splits(splits, deep=False)
    report = probe(splits, model=load_backbone(model), image_size=image_size, seed=seed, cache_dir=cache_dir)
    m = measurements(check, report)
    strategy, train_last, reasons = decide(m)
    errors = [p for p in check.problems if p.severity == "error"]
    if errors:
        reasons.append(f"first fix the data: {errors[0].message} ({errors[0].fix})")
    hp = hyperparameters(strategy, train_last, m, model)
    rec = Recommendation(strategy, reasons, hp, RUNNER_UP[strategy], m, command(splits.source if isinstance(data, DataSplits) else data, hp, per_class, classes),
                         probe=report.to_dict())
    return rec, splits


def verification_configs(rec: Recommendation, *, seed: int = 0, epochs: int = 4, cache_dir=None) -> dict[str, TrainConfig]:
    """The pick and the runner-up as short training runs on the same split and seed (`api.recommend` trains them)."""
    m = rec.measurements
    configs = {}
    for name in (rec.strategy, rec.runner_up):
        train_last = rec.hyperparameters["train_last"] if name == rec.strategy else None
        if name == "partial" and train_last is None:
            high = m["high_level_similarity"]
            train_last = 1 if high is not None and high >= SIMILAR else 2  # unmeasured (no BatchNorm): the default
        hp = rec.hyperparameters if name == rec.strategy else hyperparameters(name, train_last, m, rec.hyperparameters["model"])
        configs[name] = TrainConfig(model=hp["model"], strategy=name, train_last=hp["train_last"] if name == "partial" else None,
                                    lr_decay=hp["lr_decay"], epochs=min(epochs, hp["epochs"]), image_size=hp["image_size"],
                                    augment=hp["augment"], seed=seed, cache_dir=cache_dir)
    return configs


def verification_verdict(rec: Recommendation, runs: dict[str, dict], epochs: int) -> dict:
    """The pick holds if it is within 2 accuracy points of the better of the two verification runs."""
    results = {name: {"val_accuracy_best": run["val_accuracy_best"], "epochs": run["epochs"],
                      "train_seconds": run["train_seconds"], "run_dir": run["run_dir"]} for name, run in runs.items()}
    best = max(results, key=lambda k: results[k]["val_accuracy_best"])
    gap = results[best]["val_accuracy_best"] - results[rec.strategy]["val_accuracy_best"]
    return {"results": results, "best": best, "held": gap <= 0.02, "gap": gap, "epochs": epochs}
