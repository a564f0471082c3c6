"""A fine-tuning strategy chosen from measurements of the data, with hyperparameters and the reasons.

The textbook rule is a 2x2 table: small data & similar domain -> feature extraction; large & similar ->
fine-tune; small & different -> fine-tune the top, or train a linear model on earlier features; large &
different -> fine-tune everything (or train from scratch). Here the axes are measured instead of guessed:

    size        training images per class (and the number of classes, the imbalance)   <- check
    fit         linear-probe accuracy of the frozen features, per stage group            <- probe
    similarity  BatchNorm-statistics similarity to the pretraining data, low / high level <- probe

and the pick is not a hand-written rule but a `CellRule` fitted on a benchmark of real datasets
(`bench/recommend.py`): two thresholds cut the measurements into four cells, and each cell picks the strategy
that lost the least test accuracy to the best one over the benchmark's tasks in that cell. The fitted rule and its
track record ship as `track_record.json` beside this file; every reason quotes the measurement it used and the
cell's record. `api.recommend(..., verify=True)` trains the pick and the runner-up for a few epochs on the same
split and seed under compare's protocol (best epoch chosen on val, figures on test images: `verification_splits`),
and says whether the pick held: best, or tied with the best.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from headstart.analysis.check import CheckReport, check_splits
from headstart.analysis.probe import ProbeReport, domain_similarity, probe
from headstart.backbones import load_backbone
from headstart.data import DataSplits, find_images, load_data
from headstart.errors import HeadstartError
from headstart.stats import IMBALANCE_RATIO
from headstart.strategies import get_strategy, group_learning_rates
from headstart.train import TrainConfig

TRACK_RECORD = Path(__file__).with_name("track_record.json")  # written by `bench/recommend.py table`
SIMILAR = 0.95  # BatchNorm similarity: the data looks like the pretraining data to these layers
DIFFERENT = 0.85  # ... clearly does not (greyscale, medical, upscaled thumbnails measured 0.7-0.9)
# Outside the benchmark's range (it has no task this large), one rule stays hand-written: with this many images
# per class, a domain far at every depth and poor features, a randomly initialised network can win.
SCRATCH_IMAGES = 2000
FEATURES_POOR = 0.80
# The lesson's 2 × 2 (size × similarity to ImageNet) that the benchmark fills with measured winners: "small" is
# under this many training images per class, "different" a high-level similarity under DIFFERENT.
SMALL_PER_CLASS = 50
# The measurements a CellRule may cut on (besides size), each with the words for its two sides.
MEASURES = {"probe_accuracy": ("features fit", "features poor"),
            "high_level_similarity": ("similar to ImageNet", "different from ImageNet")}


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


@dataclass(frozen=True)
class CellRule:
    """Two thresholds cut the measurements into four cells (training images per class × one measurement of the
    features: probe accuracy or high-level similarity); each cell names a strategy, as a compare label
    ('partial:1' trains the last stage group, 'partial' the last two). `record` holds, per cell, what the benchmark
    measured there (tasks, how often each strategy was best or tied with the best, mean regret per strategy):
    the reasons quote it."""

    size_threshold: float
    measure: str
    threshold: float
    picks: dict[str, str]
    record: dict[str, dict] = field(default_factory=dict)

    def sides(self, m: dict) -> tuple[bool, bool]:
        """(small data, poor/different features). An unmeasured value (no BatchNorm) counts as the good side:
        no pick may treat the data as far from ImageNet on account of a figure nobody measured."""
        value = m.get(self.measure)
        return m["images_per_class"] < self.size_threshold, value is not None and value < self.threshold

    def cell(self, m: dict) -> str:
        small, low = self.sides(m)
        return f"{'small' if small else 'large'} data, {MEASURES[self.measure][low]}"

    def cells(self) -> list[str]:
        return [f"{size} data, {side}" for size in ("small", "large") for side in MEASURES[self.measure]]

    def pick(self, m: dict) -> str:
        return self.picks[self.cell(m)]

    def ranking(self, cell: str) -> list[str]:
        """The cell's strategies, least mean regret first (equal regrets: cheaper first), as the benchmark wrote it."""
        return list(self.record.get(cell, {}).get("ranking", []))

    def runner_up(self, m: dict) -> str | None:
        """The strategy after the pick in its cell's ranking (never the scratch control), if the cell had tasks."""
        others = [s for s in self.ranking(self.cell(m)) if s not in (self.pick(m), "scratch")]
        return others[0] if others else None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CellRule":
        return cls(d["size_threshold"], d["measure"], d["threshold"], dict(d["picks"]), dict(d.get("record", {})))


def lesson_cell(images_per_class: float, high_level_similarity: float | None) -> str:
    """The cell of the lesson's 2 × 2 that data with these measurements falls in (unmeasured similarity, a model
    without BatchNorm: 'similar', as everywhere in recommend)."""
    size = "small" if images_per_class < SMALL_PER_CLASS else "large"
    side = "different" if high_level_similarity is not None and high_level_similarity < DIFFERENT else "similar"
    return f"{size} data, {side} to ImageNet"


def placement(splits: DataSplits, cfg: TrainConfig) -> dict:
    """Where a comparison on `splits` falls in the lesson's 2 × 2: its size, its measured high-level similarity
    (a forward pass of the pretrained model over at most 100 train images per class), and the cell."""
    counts = [n for n in splits.train.counts().values() if n > 0]
    n = statistics.median(counts) if counts else 0
    model = load_backbone(cfg.model, weights=cfg.weights)  # random weights measure nothing: domain_similarity says None
    high = domain_similarity(model, splits.train, image_size=cfg.image_size, cache_dir=cfg.cache_dir)[1]
    return {"images_per_class": n, "high_level_similarity": high, "cell": lesson_cell(n, high)}


@lru_cache(maxsize=1)
def shipped_rule() -> CellRule:
    """The rule fitted on the whole benchmark (`bench/recommend.py table` writes it)."""
    return CellRule.from_dict(json.loads(TRACK_RECORD.read_text())["rule"])


def track_record() -> dict:
    """The benchmark's summary that ships with headstart: the rule, every policy's leave-one-dataset-out regret,
    and the lesson's 2 × 2 decision table with the measured winners."""
    return json.loads(TRACK_RECORD.read_text())


def split_label(label: str) -> tuple[str, int | None]:
    """A compare label as (strategy, train_last): 'partial:1' -> ('partial', 1), 'partial' -> ('partial', 2)."""
    strategy, _, depth = label.partition(":")
    if strategy != "partial":
        return strategy, None
    return strategy, int(depth) if depth else 2


def decide(m: dict, rule: CellRule | None = None) -> tuple[str, int | None, list[str]]:
    """(strategy, train_last for partial, reasons): the fitted cell rule (the shipped one unless `rule` is given),
    after the one hand-written rule for data far larger than the benchmark's."""
    shipped = rule is None or rule == shipped_rule()  # the reasons may quote the shipped rule's out-of-sample record
    rule = rule or shipped_rule()
    n, acc, low, high = m["images_per_class"], m["probe_accuracy"], m["low_level_similarity"], m["high_level_similarity"]
    measured_similarity = low is not None and high is not None
    last = m["stages"][-1]
    fit = (f"the frozen features of {last} separate your classes {acc:.0%} of the time (linear probe, cross-validated "
           f"on train; chance is {m['chance']:.0%})")
    looks = (f"to the pretrained BatchNorm layers your images look {low:.2f} similar to ImageNet in low-level "
             f"statistics and {high:.2f} in high-level ones (1 = the same)" if measured_similarity else
             "this model has no BatchNorm layers, so how far your images are from ImageNet was not measured: the "
             "probe's accuracy and the size decide alone")
    if (n >= SCRATCH_IMAGES and measured_similarity and low < DIFFERENT and high < DIFFERENT
            and acc < FEATURES_POOR):
        return "scratch", None, [
            f"{n:.0f} images per class is a lot (more than any task of the benchmark the other picks are fitted on)",
            looks + ": far from ImageNet at every depth", fit,
            "a randomly initialised network has the data to learn its own features; compare it with `full`"]
    label = rule.pick(m)
    strategy, train_last = split_label(label)
    small, low_side = rule.sides(m)
    value = m.get(rule.measure)
    reasons = [f"{n:.0f} training images per class" + (
        f": {'under' if small else 'at least'} the {rule.size_threshold:.0f} per class that splits the benchmark's "
        "tasks by size" if rule.size_threshold else ""), fit, looks]
    if value is not None and rule.threshold:
        name = "probe accuracy" if rule.measure == "probe_accuracy" else "high-level similarity"
        reasons.append(f"{name} {value:.2f} is {'below' if low_side else 'at or above'} the benchmark's cut at "
                       f"{rule.threshold:.2f}: this data falls in the cell '{rule.cell(m)}'")
    reasons.append(cell_track_record(rule, rule.cell(m), label))
    if (imbalance := imbalance_reason(m)):
        reasons.append(imbalance)
    best, by_stage = m["best_stage"], m["probe_accuracy_by_stage"]
    if best != last and by_stage[best] - acc >= 0.02 and strategy != "linear":
        reasons.append(f"features of {best} separate the classes better ({by_stage[best]:.0%}) than those of {last} "
                       f"({acc:.0%}): the top layers are specialised to ImageNet, and this pick retrains them")
    if shipped and (alternative := accuracy_first_alternative(label)):
        reasons.append(alternative)
    return strategy, train_last, reasons


def imbalance_reason(m: dict) -> str | None:
    """One sentence when the training classes are imbalanced (stats' one rule): which class size the size cut
    read, and what training and the figures do about it (the benchmark scored such tasks the same way)."""
    ratio, smallest = m.get("imbalance_ratio"), m.get("smallest_class")
    if not ratio or ratio <= IMBALANCE_RATIO:
        return None
    return (f"the classes are imbalanced (the largest has {ratio:.1f}× the images of the smallest, which has "
            f"{smallest:.0f}): the size cut read the median class; training draws class-balanced batches "
            "(--balance auto; a class-weighted loss on several devices), chooses the epoch on val balanced accuracy, "
            "and compare reports balanced accuracy")


def accuracy_first_alternative(label: str) -> str | None:
    """One sentence, when the benchmark found a fixed policy with less regret than recommend's out-of-sample
    figure: what recommend's picks cost in accuracy, what they save in time, and which policy to take instead when
    time does not matter. None when recommend is the best policy or the pick is that policy's strategy."""
    record = track_record()
    policies = record["policies"]
    ours = policies[record["recommend_policy"]]
    fixed = {name.removeprefix("always "): p for name, p in policies.items() if name.startswith("always ")}
    best = min(fixed, key=lambda s: (fixed[s]["mean_regret"], fixed[s]["relative_seconds"]))
    if label == best or fixed[best]["mean_regret"] >= ours["mean_regret"]:
        return None
    return (f"scored leave-one-dataset-out on the benchmark's {record['tasks']} tasks, recommend's picks lost "
            f"{ours['mean_regret']:.2f} test-accuracy points on average (worst {ours['worst_regret']:.1f}) in "
            f"{ours['relative_seconds'] / fixed[best]['relative_seconds']:.2f}× the training time of always {best}, "
            f"which lost {fixed[best]['mean_regret']:.2f}: if training time does not matter, train {best}")


def cell_track_record(rule: CellRule, cell: str, label: str) -> str:
    """One sentence: what the benchmark measured for the pick in this cell."""
    record = rule.record.get(cell)
    if not record or not record.get("tasks"):
        return (f"the benchmark had no task in this cell: {label} is the strategy with the least regret over all "
                "its tasks")
    tasks, wins = record["tasks"], record["best_or_tied"].get(label, 0)
    regrets = record["mean_regret"]
    others = [s for s in rule.ranking(cell) if s != label]
    next_best = f"; the next, {others[0]}, {regrets[others[0]]:.1f}" if others else ""
    return (f"on the benchmark's {len(tasks)} task{'s' if len(tasks) != 1 else ''} in this cell, {label} was the best "
            f"or tied with it in {wins} (mean regret {regrets[label]:.1f} test-accuracy points{next_best})")


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
    rule = shipped_rule()
    strategy, train_last, reasons = decide(m, rule)
    errors = [p for p in check.problems if p.severity == "error"]
    if errors:
        reasons.append(f"first fix the data: {errors[0].message} ({errors[0].fix})")
    hp = hyperparameters(strategy, train_last, m, model)
    source = splits.source if isinstance(data, DataSplits) else data
    rec = Recommendation(strategy, reasons, hp, runner_up(rule, m, strategy), m,
                         command(source, hp, per_class, classes), probe=report.to_dict())
    return rec, splits


FALLBACK_RUNNER_UP = {"linear": "partial", "partial": "linear", "lp-ft": "full", "full": "lp-ft", "gradual": "partial",
                      "scratch": "full"}


def runner_up(rule: CellRule, m: dict, strategy: str) -> str:
    """The second-best strategy of the pick's cell on the benchmark (a compare label), or the pick's usual rival."""
    return (rule.runner_up(m) if strategy != "scratch" else None) or FALLBACK_RUNNER_UP[strategy]


def pick_label(strategy: str, train_last: int | None) -> str:
    """The compare label of a pick: 'partial' trains the last 2 groups, 'partial:1' the last one."""
    return f"partial:{train_last}" if strategy == "partial" and train_last not in (None, 2) else strategy


VERIFY_TEST_FRACTION = 0.2  # of train, held out as test by --verify when the data has no test images


def verification_labels(rec: Recommendation) -> list[str]:
    """What --verify compares: the pick and the runner-up, as compare labels."""
    return [pick_label(rec.strategy, rec.hyperparameters["train_last"]), rec.runner_up]


def verification_splits(data, splits: DataSplits, *, val_fraction: float, seed: int, classes=None,
                        per_class: int | None = None) -> DataSplits:
    """The split --verify judges on, under compare's protocol: the data's own test images; else its shipped val
    images (val is then carved from train); else a share of the images held out. The probe may have seen some of
    them while measuring, but no strategy trains or selects on them."""
    if splits.test is not None:
        return splits
    if isinstance(data, DataSplits):
        raise HeadstartError("--verify reports test figures and these splits have no test role: give DataSplits "
                             "with test images, or the data's folder")
    shipped = find_images(data).sets  # a shipped val/ becomes test (as compare --val-as-test); unsplit: a held-out share
    return load_data(data, val_fraction=val_fraction, seed=seed, classes=classes, per_class=per_class,
                     val_as_test="val" in shipped, test_fraction=0.0 if "val" in shipped else VERIFY_TEST_FRACTION)


def verification_verdict(rec: Recommendation, summary: dict) -> dict:
    """Whether the pick held, by compare's own verdict: it held if it is the best on the test images or tied with
    the best (the test images cannot tell them apart). Figures are test figures of the best epoch chosen on val."""
    pick = pick_label(rec.strategy, rec.hyperparameters["train_last"])
    rows = summary["strategies"]
    results = {label: {"test": row["test"]["estimate"], "test_low": row["test"]["low"], "test_high": row["test"]["high"],
                       "val_accuracy_best": row["val_accuracy_best_mean"],
                       "train_seconds": sum(r["wall_seconds"] for r in row["runs"]),
                       "run_dir": row["runs"][0]["run_dir"]} for label, row in rows.items()}
    best = summary["best"]
    return {"results": results, "best": best, "tied": summary["tied"],
            "held": pick == best or pick in summary["tied"], "gap": results[best]["test"] - results[pick]["test"],
            "metric": summary["metric"], "epochs": summary["setup"]["epochs"], "sentence": summary["sentence"],
            "evidence": summary["setup"]["evidence"]}
