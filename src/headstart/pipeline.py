"""One run, end to end: data -> decoded splits -> backbone with a new head -> `train.fit` -> the run directory.

    data.load_data -> analysis.check.preflight -> cache.decode_images -> backbones.load_backbone + reset_head
        -> train.fit (analysis.drift's forgetting monitor beside it) -> evaluate -> runs (+ report)

Three roles, three jobs: `fit` trains on train and selects on val (the best epoch, early stopping, the LP-FT
switch); the best weights then score the test split once, and only that is a reported figure (run.json
`test_accuracy`, `test_balanced_accuracy`, `test_metrics`, per image in test_predictions.csv). The selection
figure is kept apart as `val_accuracy_best`: the best of several epochs on val is optimistic by construction.
A run without a test split trains all the same and says that it has no test figure, and how to get one.

`compare` runs this once per cell of its experiment; `api.train` is this function. It is the only place that
composes a run, so the CLI, the notebooks, `compare` and `recommend --verify` train the same way.
"""

from __future__ import annotations

import platform
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.table import Table

from headstart import __version__, engine
from headstart.analysis.check import preflight
from headstart.analysis.drift import build_monitor
from headstart.backbones import StagedModel, count_params, load_backbone
from headstart.cache import decode_images, recording_cache_use
from headstart.console import console, info, warn_skipped
from headstart.data import DataSplits, ImageSet, image_id, load_data, role_fingerprints
from headstart.engine import pick_device
from headstart.errors import HeadstartError
from headstart.evaluate import classification_metrics
from headstart.precision import precision_plan
from headstart.report.html import write_grid, write_run_report
from headstart.report.plots import plot_confusion, plot_curves, plot_forgetting
from headstart.runs import (
    HISTORY_FILE, RUN_FILE, TEST_PREDICTIONS_FILE, load_resume_point, plain, remove_resume_point, run_folder_lock,
    save_checkpoint, save_resume_point, write_history, write_json, write_seen_images, write_test_predictions,
)
from headstart.stats import RunPredictions, headline_metric, metric_interval
from headstart.strategies import Strategy, describe_strategy
from headstart.train import (FitResult, Split, TrainConfig, batchnorm_parts, check_ghost_batch_norm, eval_loader, fit, predict_batches,
                             resolve_strategy)
from headstart.transforms import suggest_image_size


def build_model(cfg: TrainConfig, strategy: Strategy, num_classes: int) -> StagedModel:
    """The backbone (pretrained unless the strategy starts from scratch) with a fresh head, seeded."""
    torch.manual_seed(cfg.seed)
    model = load_backbone(cfg.model, pretrained=strategy.pretrained, weights=cfg.weights if strategy.pretrained else None)
    model.reset_head(num_classes)
    model.preprocessing = model.preprocessing.with_image_size(cfg.image_size)
    return model


def decode_split(images: ImageSet, model: StagedModel, cfg: TrainConfig, name: str) -> Split:
    return decode_kept(images, model, cfg, name)[0]


def decode_kept(images: ImageSet, model: StagedModel, cfg: TrainConfig, name: str) -> tuple[Split, list[int]]:
    """The decoded split, and which images of `images` it holds (unreadable ones are skipped, with a warning)."""
    decoded = decode_images(images, model.preprocessing, cfg.cache_dir, cfg.use_cache, label=f"decode {name}")
    warn_skipped(decoded.skipped, f"unreadable {name} files")
    labels = torch.tensor([images.labels[i] for i in decoded.kept], dtype=torch.long)
    kept_counts = torch.bincount(labels, minlength=len(images.classes))
    empty = [c for c, n in zip(images.classes, kept_counts.tolist()) if n == 0]
    if name == "train" and empty:
        raise HeadstartError(f"no readable training images for class {', '.join(empty)}")
    if name == "test" and not decoded.kept:
        raise HeadstartError("no readable test images: fix or replace the files of the test split")
    return Split(decoded.pixels, labels, decoded.key), decoded.kept


@dataclass
class TestSet:
    """The decoded test split and the id of each of its images (`data.image_id`), for test_predictions.csv."""

    split: Split
    ids: list[str]


NO_TEST = ("no test split, so no test figure: the val figures chose the best epoch and are optimistic; for a "
           "figure nothing was selected on use --test-fraction F (unsplit data), --val-as-test (data with val/) "
           "or a test/ folder")


def print_plan(model: StagedModel, strategy: Strategy) -> None:
    """What gets trained, at which LR, with which BN mode: printed at the start of every run."""
    table = Table(title=f"{model.name} · {strategy.name}: {strategy.description}", title_justify="left")
    for col in ("group", "params", "trainable", "lr", "batchnorm", "unfreezes"):
        table.add_column(col, justify="right" if col in ("params", "lr") else "left")
    for row in describe_strategy(strategy, model):
        table.add_row(row["group"], f"{row['params']:,}", "yes" if row["trainable"] else "frozen",
                      f"{row['lr']:.2g}" if row["lr"] else "-", row["batchnorm"],
                      "-" if row["unfreezes_at_epoch"] in (None, 0) else f"epoch {row['unfreezes_at_epoch'] + 1}")
    console.print(table)


def environment() -> dict:
    return {"headstart": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "cpus": torch.get_num_threads(), "device": str(pick_device())}


def train(data: str | Path | DataSplits, cfg: TrainConfig | None = None, out: str | Path | None = None, *,
          val_fraction: float = 0.2, classes: list[str] | None = None, per_class: int | None = None,
          data_seed: int = 0, test_fraction: float = 0.0, val_as_test: bool = False,
          val_per_class: int | None = None, command: str | None = None) -> dict | None:
    """Fine-tune `cfg.model` on `data` with `cfg.strategy`; write the run directory `out`; return run.json.

    The split and the subsample follow `data_seed`, not `cfg.seed`: runs that differ only in their seed see
    the same images, so their spread measures the training's randomness, not the data's. `test_fraction`,
    `val_as_test` and `val_per_class` are `data.load_data`'s: where the test images come from, and a cap on val.
    Every epoch leaves a resume point in `out`; `cfg.resume` continues from it, exactly as the run would have gone
    on. With `cfg.devices` > 1 the engine starts that many processes here, each running the calling program from
    its start (a script or the CLI, not a notebook); the first writes the run and returns run.json, the others
    return None."""
    cfg = cfg or TrainConfig()
    fabric = engine.start(cfg.device, cfg.devices)
    precision_plan(cfg.precision, fabric.device)  # an impossible --precision stops here, before any work
    check_ghost_batch_norm(cfg)  # so does --ghost-bn where no BatchNorm trains
    first = fabric.is_global_zero
    strategy = resolve_strategy(cfg)
    splits = data if isinstance(data, DataSplits) else load_data(
        data, val_fraction=val_fraction, seed=data_seed, classes=classes, per_class=per_class,
        test_fraction=test_fraction, val_as_test=val_as_test, val_per_class=val_per_class)
    warn_skipped(splits.skipped, "non-image files")
    preflight(splits)  # the fast part of `headstart check` (counts, imbalance, duplicates, leakage)
    out = Path(out or Path("runs") / f"{cfg.strategy}-{time.strftime('%Y%m%d-%H%M%S')}")
    # one process writes into a run directory: a second `train --out` into it stops at once, naming the first
    with run_folder_lock(out) if first else nullcontext():
        return train_into(out, splits, strategy, cfg, fabric, per_class=per_class, data_seed=data_seed, command=command)


def train_into(out: Path, splits: DataSplits, strategy: Strategy, cfg: TrainConfig, fabric, *, per_class: int | None,
               data_seed: int, command: str | None) -> dict | None:
    """`train` after the data is resolved and `out` is held: build, fit, and write the run directory. run.json
    says which cache entries the run computed and which it reused (`cache`: decoded images, frozen features), so
    compare can report what its cells shared."""
    with recording_cache_use() as cache_use:
        run = build_fit_and_write(out, splits, strategy, cfg, fabric, per_class=per_class, data_seed=data_seed,
                                  command=command)
    if run is not None:
        run["cache"] = cache_use
        write_json(out / RUN_FILE, run)
    return run


def build_fit_and_write(out: Path, splits: DataSplits, strategy: Strategy, cfg: TrainConfig, fabric, *,
                        per_class: int | None, data_seed: int, command: str | None) -> dict | None:
    """Everything but the cache record; the run.json it returns gains `forgetting` after finish_run wrote it, and
    train_into writes it once more, whole."""
    first = fabric.is_global_zero
    model = build_model(cfg, strategy, len(splits.classes))
    with fabric.rank_zero_first():  # the first process decodes into the cache, the others read what it wrote
        train_split = decode_split(splits.train, model, cfg, "train")
        val_split = decode_split(splits.val, model, cfg, "val")
    test = decode_test(splits, model, cfg) if first and splits.test is not None else None  # looked at after fit
    _suggest_size(cfg, model, splits.train)
    n_test = f" / {len(test.split)} test" if test else ""
    info(f"data: {splits.source} · {len(train_split)} train / {len(val_split)} val{n_test} images · "
         f"{len(splits.classes)} classes · {model.preprocessing.image_size}px · weights: {model.weights}")
    if splits.roles:
        info(f"roles: {splits.roles}")
    print_plan(model, strategy)
    monitor = forgetting_monitor(cfg, strategy, model, train_split) if first else None
    config = run_config(cfg, strategy, model, splits, per_class, data_seed, len(train_split), command)
    resume = resume_point_for(out, config) if cfg.resume else None

    def end_of_epoch(history: list[dict], point: dict) -> None:
        write_history(out / HISTORY_FILE, history)
        save_resume_point(out, point, config)

    result = fit(model, strategy, train_split, val_split, cfg,
                 on_checkpoint=lambda state, epoch: save_checkpoint(out, state, {**config, "epoch": epoch}),
                 on_epoch=end_of_epoch, monitor=monitor, fabric=fabric, resume=resume)
    if not first:
        return None
    if not result.history:
        raise HeadstartError("stopped before the first epoch finished: nothing to save")
    run = finish_run(out, model, result, strategy, splits, val_split, config, test)
    if monitor is not None:  # what fine-tuning forgot, next to what it learned
        last = [row for row in result.history if monitor.measured(row)][-1]  # the last epoch it measured
        run["forgetting"] = {**monitor.summary(), "l2sp": cfg.l2sp,
                             "final": {k: v for k, v in last.items() if k.startswith(("drift_", "cka_", "imagenet_top1"))}}
        plot_forgetting(result.history, out / "forgetting.png", f"{cfg.model} · {strategy.name} · what fine-tuning changed",
                        monitor.imagenet_top1_pretrained)
    if not result.interrupted and not cfg.keep_checkpoints:
        remove_resume_point(out)
    return run


def decode_test(splits: DataSplits, model: StagedModel, cfg: TrainConfig) -> TestSet:
    split, kept = decode_kept(splits.test, model, cfg, "test")
    return TestSet(split, [image_id(splits.test.refs[i], splits.source) for i in kept])


def run_config(cfg: TrainConfig, strategy: Strategy, model: StagedModel, splits: DataSplits, per_class: int | None,
               data_seed: int, n_train: int, command: str | None) -> dict:
    """config.json: what rebuilds the model and says what the run was (the diagram's rows included), and which
    images it trained on, selected on and is reported on (`fingerprints`: one content hash per role)."""
    return {"model": cfg.model, "classes": splits.classes, "preprocessing": model.preprocessing.to_dict(),
            "strategy": strategy.to_dict(), "groups": describe_strategy(strategy, model), "train": cfg.to_dict(),
            "weights": model.weights, "data": splits.source, "per_class": per_class, "data_seed": data_seed,
            "n_train": n_train, "val_files": len(splits.val),
            "test_files": len(splits.test) if splits.test is not None else 0,
            "roles": splits.roles, "fingerprints": role_fingerprints(splits),
            "precision": precision_plan(cfg.precision, pick_device(cfg.device)),  # what `train.precision` became here
            "batchnorm_parts": batchnorm_parts(cfg, strategy, model.preprocessing.image_size),  # ... and --ghost-bn
            "command": command, "environment": environment()}


# TrainConfig fields that say where and how a run is kept, not what it computes: a resume may change them
_NOT_IDENTITY = ("resume", "keep_checkpoints", "device", "devices", "num_workers", "cache_dir", "use_cache",
                 "micro_batch")


def resume_point_for(out: Path, config: dict) -> dict | None:
    """The resume point `out` holds, if it is one of this very run (same settings, same data); None if there is
    none; an error if it belongs to another run."""
    saved = load_resume_point(out)
    if saved is None:
        info(f"{out}: no resume point, starting from epoch 1")
        return None
    point, then = saved
    now = plain(config)
    differ = [k for k in ("model", "classes", "data", "per_class", "data_seed", "n_train", "val_files", "strategy",
                          "fingerprints", "batchnorm_parts") if then.get(k) != now.get(k)]
    differ += [f"train.{k}" for k in now["train"] if k not in _NOT_IDENTITY and then["train"].get(k) != now["train"][k]]
    if differ:
        raise HeadstartError(f"{out} holds a resume point of another run (it differs in {', '.join(differ)}); "
                             "use another --out, or delete that folder to start over")
    info(f"{out}: resuming after epoch {point['epochs_done']}")
    return point


def forgetting_monitor(cfg: TrainConfig, strategy: Strategy, model: StagedModel, train: Split):
    """issue #4: weight drift, CKA and old-task accuracy per epoch, for strategies that change a pretrained
    backbone (partial, full, gradual, lp-ft); None for linear and scratch."""
    changes_backbone = any(p.train_last != 0 for p in strategy.phases_for(len(model.stage_names)))
    if not (strategy.pretrained and model.pretrained and changes_backbone):
        return None
    return build_monitor(cfg, train.pixels, model.preprocessing, seed=cfg.seed, epochs=cfg.epochs or strategy.epochs)


def finish_run(out: Path, model: StagedModel, result: FitResult, strategy: Strategy, splits: DataSplits,
               val: Split, config: dict, test: TestSet | None = None) -> dict:
    """Best weights back in; val metrics (the selection figures); the test split scored once with them (the
    reported figures); run.json, test_predictions.csv, seen_images.json, figures."""
    model.load_state_dict(result.best_state)
    device = pick_device(config["train"]["device"])
    precision = config["precision"]["inference"]
    if result.val_logits is not None:  # fit evaluated the best weights on val already: no second forward pass
        logits, labels = result.val_logits, result.val_labels
    else:
        logits, labels = predict_batches(model, eval_loader(val, model.preprocessing, device), 0,
                                         model.preprocessing, device, precision)
    metrics = classification_metrics(logits, labels, splits.classes)
    last, best = result.history[-1], result.history[result.best_epoch - 1]
    counts = torch.bincount(torch.as_tensor(splits.train.labels), minlength=len(splits.classes)).tolist()
    run = {
        "model": config["model"], "strategy": strategy.name, "classes": splits.classes,
        **test_record(out, model, test, splits, counts, device, precision),
        "val_accuracy_best": result.best_val_accuracy, "val_balanced_accuracy_best": best["val_balanced_accuracy"],
        "selected_on": result.select_on, "best_epoch": result.best_epoch,
        "best_val_accuracy": result.best_val_accuracy,  # deprecated alias of val_accuracy_best (a selection figure)
        "final_train_accuracy": last["train_accuracy"], "final_val_accuracy": last["val_accuracy"],
        "epochs": len(result.history), "epochs_planned": config["train"]["epochs"] or strategy.epochs,
        "train_seconds": result.train_seconds, "monitor_seconds": result.monitor_seconds,
        "precision": config["precision"],
        "trainable_params": count_params(model, trainable_only=True),
        "trainable_params_max": _max_trainable(model, result.history), "total_params": count_params(model),
        "n_train": config["n_train"], "n_val": int(len(labels)), "class_counts": dict(zip(splits.classes, counts)),
        "balance": result.balance, "roles": splits.roles, "evidence": evidence_note(result, len(labels), test),
        "interrupted": result.interrupted,
        "stopped_early": result.stopped_early, "seed": config["train"]["seed"],
        "image_size": model.preprocessing.image_size, "weights": model.weights,
        "devices": config["train"].get("devices", 1),
        "val_metrics": metrics, "environment": config["environment"],
    }
    write_json(out / RUN_FILE, run)
    write_history(out / HISTORY_FILE, result.history)
    write_seen_images(out, splits.train.fingerprints(), splits.val.fingerprints())
    plot_curves(result.history, out / "curves.png", f"{config['model']} · {strategy.name}")
    shown, role = (run["test_metrics"], "test") if test else (metrics, "val")
    plot_confusion(shown["confusion_matrix"], splits.classes, out / "confusion.png", f"{role} accuracy {shown['accuracy']:.3f}")
    write_grid(out, val.pixels, labels, logits, splits.classes)  # val images with predictions, for the report
    write_run_report(out)
    reported = (f"test {run['test_metric'].replace('_', ' ')} {run['test_' + run['test_metric']]:.4f} "
                f"(95% interval {run['test_interval']['low']:.3f}-{run['test_interval']['high']:.3f}, {run['n_test']} "
                "images nothing was selected on)" if test else "no test figure (no test split)")
    info(f"{reported} · best val accuracy {result.best_val_accuracy:.4f} (epoch {result.best_epoch}, selected on "
         f"{result.select_on.replace('_', ' ')}) · {result.train_seconds:.1f}s · outputs in {out} (report.html)")
    return run


def test_record(out: Path, model: StagedModel, test: TestSet | None, splits: DataSplits, train_counts: list[int],
                device: torch.device, precision: str = "fp32") -> dict:
    """The reported figures: the best weights on the test split, once. Without a test split, None and why."""
    if test is None:
        return {"test_metric": None, "test_accuracy": None, "test_balanced_accuracy": None, "test_metrics": None,
                "test_interval": None, "n_test": 0, "test_predictions": None, "no_test": NO_TEST}
    pre = model.preprocessing
    logits, labels = predict_batches(model, eval_loader(test.split, pre, device), 0, pre, device, precision)
    metrics = classification_metrics(logits, labels, splits.classes)
    predicted = logits.argmax(1)
    write_test_predictions(out, test.ids, labels.tolist(), predicted.tolist())
    metric = headline_metric(labels.numpy(), train_counts)
    interval = metric_interval([RunPredictions("run", 0, labels.numpy(), predicted.numpy(), test.ids)], metric)
    return {"test_metric": metric, "test_accuracy": metrics["accuracy"],
            "test_balanced_accuracy": metrics["balanced_accuracy"], "test_metrics": metrics,
            "test_interval": {"metric": metric, "low": interval.low, "high": interval.high,
                              "confidence": interval.confidence,
                              "covers": "the sampling of the test images (one trained model: not the seed's effect)"},
            "n_test": int(len(labels)), "test_predictions": TEST_PREDICTIONS_FILE, "no_test": None}


def evidence_note(result: FitResult, n_val: int, test: TestSet | None) -> str:
    """What was selected on what, in one line (the reports print it in small type)."""
    chosen = "best epoch" + (" and early stop" if result.stopped_early else "")
    metric = result.select_on.replace("_", " ")
    selected = f"{chosen} chosen by {metric} on {n_val:,} val images"
    if test is None:
        return f"{selected}; no test split, so no figure here is free of selection"
    return f"{selected}; figures on {len(test.split):,} test images nothing was selected on"


def _max_trainable(model: StagedModel, history: list[dict]) -> int:
    """Parameters that trained in the widest phase the run actually reached (gradual ends with more than it
    starts with; phases past the epoch budget or an early stop do not count)."""
    widest = max((row["trainable"].split("+") for row in history), key=len)
    return sum(count_params(model.group(g)) for g in widest)


def _suggest_size(cfg: TrainConfig, model: StagedModel, images: ImageSet) -> None:
    if cfg.image_size is not None or not images.refs:
        return
    side = images.median_short_side()
    size = suggest_image_size(model.preprocessing, side) if side else None
    if size:
        info(f"tip: the images are ~{int(side)}px; --image-size {size} would be "
             f"{(model.preprocessing.image_size / size) ** 2:.1f}x cheaper at little cost in accuracy")
