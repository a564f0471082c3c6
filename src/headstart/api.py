"""The library API: the main jobs, composed from the modules in data-flow order.

    data.load_data -> cache.decode_images -> backbones.load_backbone + reset_head
        -> strategies.get_strategy -> train.fit -> evaluate -> runs (+ report)

The CLI, the notebook and `compare` all call these functions; none of them has a loop of its own.
"""

from __future__ import annotations

import platform
import time
from dataclasses import replace
from pathlib import Path

import torch

from headstart import __version__, engine
from headstart.backbones import StagedModel, count_params, load_backbone
from headstart.cache import decode_images
from headstart.console import console, info, warn, warn_skipped
from headstart.data import DataSplits, ImageSet, load_class_folders, load_data
from headstart.errors import HeadstartError
from headstart.evaluate import classification_metrics, evaluate_imagenet, evaluate_model, predict_files
from headstart.report.diagram import DiagramRow
from headstart.report.html import write_grid, write_run_report
from headstart.report.plots import plot_confusion, plot_curves
from headstart.runs import (
    HISTORY_FILE, RUN_FILE, is_run_dir, load_run, save_checkpoint, write_history, write_json,
)
from headstart.strategies import Strategy, describe_strategy, get_strategy
from headstart.engine import pick_device
from headstart.train import FitResult, Split, TrainConfig, fit, predict_batches
from headstart.transforms import suggest_image_size


def resolve_strategy(cfg: TrainConfig) -> Strategy:
    return get_strategy(cfg.strategy, train_last=cfg.train_last, lr=cfg.lr, head_lr=cfg.head_lr,
                        lr_decay=cfg.lr_decay, epochs=cfg.epochs, augment=cfg.augment,
                        train_bn_stats=None if cfg.freeze_bn is None else not cfg.freeze_bn)


def build_model(cfg: TrainConfig, strategy: Strategy, num_classes: int) -> StagedModel:
    """The backbone (pretrained unless the strategy starts from scratch) with a fresh head, seeded."""
    torch.manual_seed(cfg.seed)
    model = load_backbone(cfg.model, pretrained=strategy.pretrained, weights=cfg.weights if strategy.pretrained else None)
    model.reset_head(num_classes)
    model.preprocessing = model.preprocessing.with_image_size(cfg.image_size)
    return model


def decode_split(images: ImageSet, model: StagedModel, cfg: TrainConfig, name: str) -> Split:
    decoded = decode_images(images, model.preprocessing, cfg.cache_dir, cfg.use_cache, label=f"decode {name}")
    warn_skipped(decoded.skipped, f"unreadable {name} files")
    labels = torch.tensor([images.labels[i] for i in decoded.kept], dtype=torch.long)
    kept_counts = torch.bincount(labels, minlength=len(images.classes))
    empty = [c for c, n in zip(images.classes, kept_counts.tolist()) if n == 0]
    if name == "train" and empty:
        raise HeadstartError(f"no readable training images for class {', '.join(empty)}")
    return Split(decoded.pixels, labels, decoded.key)


def print_plan(model: StagedModel, strategy: Strategy) -> None:
    """What gets trained, at which LR, with which BN mode: printed at the start of every run."""
    from rich.table import Table

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
          data_seed: int = 0, command: str | None = None) -> dict | None:
    """Fine-tune `cfg.model` on `data` with `cfg.strategy`; write the run directory `out`; return run.json.

    The split and the subsample follow `data_seed`, not `cfg.seed`: runs that differ only in their seed see
    the same images, so their spread measures the training's randomness, not the data's.
    With `cfg.devices` > 1 the engine starts that many processes here, each running the calling program from
    its start (a script or the CLI, not a notebook); the first writes the run and returns run.json, the others
    return None."""
    cfg = cfg or TrainConfig()
    fabric = engine.start(cfg.device, cfg.devices)
    first = fabric.is_global_zero
    strategy = resolve_strategy(cfg)
    splits = data if isinstance(data, DataSplits) else load_data(
        data, val_fraction=val_fraction, seed=data_seed, classes=classes, per_class=per_class)
    warn_skipped(splits.skipped, "non-image files")
    from headstart.analysis.check import preflight

    preflight(splits)  # issue #4: the fast part of `headstart check` (counts, imbalance, duplicates, leakage)
    out = Path(out or Path("runs") / f"{cfg.strategy}-{time.strftime('%Y%m%d-%H%M%S')}")
    if first:
        out.mkdir(parents=True, exist_ok=True)

    model = build_model(cfg, strategy, len(splits.classes))
    with fabric.rank_zero_first():  # the first process decodes into the cache, the others read what it wrote
        train_split = decode_split(splits.train, model, cfg, "train")
        val_split = decode_split(splits.val, model, cfg, "val")
    _suggest_size(cfg, model, splits.train)
    info(f"data: {splits.source} · {len(train_split)} train / {len(val_split)} val images · "
         f"{len(splits.classes)} classes · {model.preprocessing.image_size}px · weights: {model.weights}")
    print_plan(model, strategy)
    monitor = forgetting_monitor(cfg, strategy, model, train_split) if first else None

    config = {"model": cfg.model, "classes": splits.classes, "preprocessing": model.preprocessing.to_dict(),
              "strategy": strategy.to_dict(), "train": cfg.to_dict(), "weights": model.weights,
              "data": splits.source, "per_class": per_class, "data_seed": data_seed, "n_train": len(train_split),
              "val_files": len(splits.val), "command": command, "environment": environment()}
    result = fit(model, strategy, train_split, val_split, cfg,
                 on_checkpoint=lambda state, epoch: save_checkpoint(out, state, {**config, "epoch": epoch}),
                 on_epoch=lambda history: write_history(out / HISTORY_FILE, history), monitor=monitor, fabric=fabric)
    if not first:
        return None
    if not result.history:
        raise HeadstartError("stopped before the first epoch finished: nothing to save")
    run = finish_run(out, model, result, strategy, splits, val_split, config)
    if monitor is not None:  # issue #4: what fine-tuning forgot, next to what it learned
        last = result.history[-1]
        run["forgetting"] = {**monitor.summary(), "l2sp": cfg.l2sp,
                             "final": {k: v for k, v in last.items() if k.startswith(("drift_", "cka_", "imagenet_top1"))}}
        write_json(out / RUN_FILE, run)
        from headstart.analysis.drift import plot_forgetting

        plot_forgetting(result.history, out / "forgetting.png", f"{cfg.model} · {strategy.name} · what fine-tuning changed",
                        monitor.imagenet_top1_pretrained)
    return run


def forgetting_monitor(cfg: TrainConfig, strategy: Strategy, model: StagedModel, train: Split):
    """issue #4: weight drift, CKA and old-task accuracy per epoch, for strategies that change a pretrained
    backbone (partial, full, gradual, lp-ft); None for linear and scratch."""
    changes_backbone = any(p.train_last != 0 for p in strategy.phases_for(len(model.stage_names)))
    if not (strategy.pretrained and model.pretrained and changes_backbone):
        return None
    from headstart.analysis.drift import build_monitor

    return build_monitor(cfg, train.pixels, model.preprocessing, seed=cfg.seed)


def finish_run(out: Path, model: StagedModel, result: FitResult, strategy: Strategy, splits: DataSplits,
               val: Split, config: dict) -> dict:
    """Best weights back in, final evaluation, run.json, figures."""
    model.load_state_dict(result.best_state)
    if result.val_logits is not None:  # fit evaluated the best weights on val already: no second forward pass
        logits, labels = result.val_logits, result.val_labels
    else:
        from torch.utils.data import DataLoader

        from headstart.features import inference_batch_size
        from headstart.train import PixelDataset
        from headstart.transforms import eval_transform

        device = pick_device(config["train"]["device"])
        loader = DataLoader(PixelDataset(val.pixels, val.labels, eval_transform(model.preprocessing)),
                            batch_size=inference_batch_size(model.preprocessing.image_size, device))
        logits, labels = predict_batches(model, loader, 0, model.preprocessing, device)
    metrics = classification_metrics(logits, labels, splits.classes)
    last = result.history[-1]
    run = {
        "model": config["model"], "strategy": strategy.name, "classes": splits.classes,
        "best_val_accuracy": result.best_val_accuracy, "best_epoch": result.best_epoch,
        "final_train_accuracy": last["train_accuracy"], "final_val_accuracy": last["val_accuracy"],
        "epochs": len(result.history), "epochs_planned": config["train"]["epochs"] or strategy.epochs,
        "train_seconds": result.train_seconds, "trainable_params": count_params(model, trainable_only=True),
        "trainable_params_max": _max_trainable(model, result.history), "total_params": count_params(model),
        "n_train": config["n_train"], "n_val": int(len(labels)), "interrupted": result.interrupted,
        "stopped_early": result.stopped_early, "seed": config["train"]["seed"],
        "image_size": model.preprocessing.image_size, "weights": model.weights,
        "devices": config["train"].get("devices", 1),
        "val_metrics": metrics, "environment": config["environment"],
    }
    write_json(out / RUN_FILE, run)
    write_history(out / HISTORY_FILE, result.history)
    plot_curves(result.history, out / "curves.png", f"{config['model']} · {strategy.name}")
    plot_confusion(metrics["confusion_matrix"], splits.classes, out / "confusion.png", f"val accuracy {metrics['accuracy']:.3f}")
    write_grid(out, val.pixels, labels, logits, splits.classes)  # val images with predictions, for the report
    write_run_report(out, DiagramRow(strategy.name, strategy.pretrained, describe_strategy(strategy, model)))
    info(f"best val accuracy {result.best_val_accuracy:.4f} (epoch {result.best_epoch}) · "
         f"{result.train_seconds:.1f}s · outputs in {out} (report.html)")
    return run


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


def evaluate(model_or_run: str | Path, data: str | Path, **kwargs) -> dict:
    """A run directory (or a comparison: its winner's best run): metrics of the fine-tuned model on `data` (its
    val/ split, or class folders). A model name: its own ImageNet head's top-1/top-5 on ImageNet synset folders."""
    model_or_run = _run_or_winner(model_or_run)
    if is_run_dir(model_or_run):
        model, config = load_run(model_or_run)
        folder = Path(data)
        folder = folder / "val" if (folder / "val").is_dir() else folder
        images, skipped = load_class_folders(folder)
        warn_skipped(skipped, "non-image files")
        unknown = [c for c in images.classes if c not in config["classes"]]
        if unknown:
            raise HeadstartError(f"{folder} has classes the run was not trained on: {', '.join(unknown)}")
        remap = [config["classes"].index(c) for c in images.classes]
        images = replace(images, classes=config["classes"], labels=[remap[y] for y in images.labels])
        logits, labels, _ = evaluate_model(model, images, **kwargs)
        return classification_metrics(logits, labels, config["classes"])
    model = load_backbone(str(model_or_run))
    if not model.pretrained:
        warn("evaluating random weights: expect chance accuracy")
    return evaluate_imagenet(model, data, **kwargs)


def predict(run_dir: str | Path, paths: list[str | Path], top_k: int = 1) -> list[dict]:
    """Top-k labels with probabilities for image files or folders, from a run (or a comparison's winner)."""
    model, config = load_run(_run_or_winner(run_dir))
    return predict_files(model, config["classes"], paths, top_k=top_k)


def export(run_dir: str | Path, out: str | Path | None = None, fmt: str | None = None,
           images: list[str | Path] | None = None) -> dict:
    """The run's best model as one .onnx or .pt2 file that serves without headstart (normalisation and softmax
    inside), checked against PyTorch on `images` (or a random batch); a `<file>.json` sidecar names the classes
    and the resize/crop to apply. Returns the sidecar."""
    from headstart.export import export_run

    return export_run(_run_or_winner(run_dir), out, fmt, images)


def _run_or_winner(path: str | Path) -> Path:
    from headstart.compare import winner_run_dir  # (compare imports this module)

    return winner_run_dir(path)


def inspect_model(name: str, strategy: str = "linear", num_classes: int | None = None, train_last: int | None = None,
                  freeze_bn: bool | None = None) -> dict:
    """The backbone's stage groups with parameter counts, what trains under `strategy`, and its head."""
    spec = resolve_strategy(TrainConfig(strategy=strategy, train_last=train_last, freeze_bn=freeze_bn))
    model = load_backbone(name, pretrained=spec.pretrained)
    if num_classes:
        model.reset_head(num_classes)
    return {"model": name, "weights": model.weights, "strategy": spec.name, "preprocessing": model.preprocessing.to_dict(),
            "groups": describe_strategy(spec, model), "head": repr(model.head.fc),
            "total_params": count_params(model),
            "trainable_params": sum(r["params"] for r in describe_strategy(spec, model) if r["trainable"])}
