"""The controlled experiment: several strategies × seeds on the same data, then summary.json and the reports.

    load_data once (one split, one subsample: every run sees the same images)
      -> for seed, strategy: pipeline.train(...) into out/runs/<strategy>-seed<seed>  (finished runs are skipped)
      -> summarize(out): per-strategy mean/std over seeds, read back from the run directories
      -> report.html + report.md

Everything but the starting point and what is frozen is held fixed: architecture, data, split, image size,
the epoch budget (`headstart compare` turns early stopping off; from Python pass `TrainConfig(patience=None)`)
and the augmentation. The strategies' own
default augmentations differ (`linear` trains on un-augmented, cacheable features), so compare passes ONE
`augment` to every run; `linear` and `partial` get it through `views` augmented copies of each image whose
frozen-prefix output is computed once, so they stay cached while seeing the same kind of augmented data.
Each strategy keeps its own learning rates: they are part of what the strategy is.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from headstart import engine
from headstart.pipeline import train as train_run
from headstart.report.html import write_compare_report
from headstart.report.markdown import write_compare_markdown
from headstart.console import info
from headstart.data import DataSplits, ImageSet, load_data
from headstart.errors import HeadstartError
from headstart.runs import (
    CONFIG_FILE, HISTORY_FILE, RUN_FILE, SUMMARY_FILE, read_history, read_run, run_dir, write_json,
)
from headstart.strategies import Strategy, parse_label, strategy_for_label, what_trains
from headstart.train import TrainConfig, default_views, resolve_strategy

DEFAULT_AUGMENT = "light"
# Settings that change what a run computes: a finished run is reused only when all of them match.
_RUN_IDENTITY = ("model", "strategy", "epochs", "batch_size", "lr", "head_lr", "lr_decay", "train_last", "optimizer",
                 "weight_decay", "label_smoothing", "warmup_epochs", "augment", "views", "freeze_bn", "patience", "seed",
                 "image_size", "weights")


def run_config(base: TrainConfig, label: str, seed: int, epochs: int, augment: str) -> TrainConfig:
    """The TrainConfig of one cell of the experiment: `base` with the strategy, seed and shared settings.
    The views are spelled out (`train.default_views` unless `base` says), so the run's config records them."""
    name, k = parse_label(label)
    cfg = replace(base, strategy=name, train_last=k if k is not None else base.train_last, seed=seed, epochs=epochs,
                  augment=augment, resume=True)  # an interrupted cell continues from its last whole epoch
    views = base.views if base.views is not None else default_views(resolve_strategy(cfg), epochs, augment)
    return replace(cfg, views=views)


def data_identity(splits: DataSplits, per_class: int | None, data_seed: int) -> dict:
    """What makes two runs' data the same: where it came from, which classes, which subsample and split, how many
    val images. `pipeline.train` records the same keys in config.json."""
    return {"data": _resolved(splits.source), "classes": list(splits.classes), "per_class": per_class,
            "data_seed": data_seed, "val_files": len(splits.val)}


def _resolved(source: str) -> str:
    """A folder or CSV as an absolute path, so a run started from another working directory still matches."""
    path = Path(source)
    return str(path.resolve()) if path.exists() else source


def is_finished(directory: Path, cfg: TrainConfig, data: dict | None = None) -> bool:
    """True if `directory` holds a completed run of exactly `cfg` on `data` (see `data_identity`); an error if
    it holds a different one."""
    if not (directory / RUN_FILE).is_file() or not (directory / HISTORY_FILE).is_file():
        return False
    run = read_run(directory)
    if run.get("interrupted"):
        return False
    config = json.loads((directory / CONFIG_FILE).read_text())
    done, wanted = config["train"], cfg.to_dict()
    differ = {k: (done.get(k), wanted.get(k)) for k in _RUN_IDENTITY if done.get(k) != wanted.get(k)}
    recorded = {**config, "data": _resolved(config.get("data", ""))}
    differ.update({k: (recorded.get(k), v) for k, v in (data or {}).items()
                   if k in config and recorded.get(k) != v})  # (runs older than a key are not held to it)
    # the strategy as it was resolved then: a default changed in the code since makes it another experiment
    spec = json.loads(json.dumps(resolve_strategy(cfg).to_dict()))
    if "strategy" in config and config["strategy"] != spec:
        differ["strategy spec"] = _spec_diff(config["strategy"], spec)
    if differ:
        raise HeadstartError(
            f"{directory} holds a run with other settings ({', '.join(f'{k}: {a} vs {b}' for k, (a, b) in differ.items())}); "
            "use another --out, or delete that folder to redo it")
    return True


def _spec_diff(old: dict, new: dict) -> tuple[dict, dict]:
    keys = [k for k in new if old.get(k) != new.get(k)]
    return {k: old.get(k) for k in keys}, {k: new[k] for k in keys}


def first_per_class(images: ImageSet, n: int) -> ImageSet:
    """The first `n` images of every class, in file order (a fixed, smaller validation set)."""
    seen: dict[int, int] = defaultdict(int)
    keep = []
    for i, y in enumerate(images.labels):
        if seen[y] < n:
            keep.append(i)
            seen[y] += 1
    return images.subset(keep)


def compare(
    data: str | Path | DataSplits,
    strategies: list[str],
    seeds: list[int],
    out: str | Path,
    base: TrainConfig | None = None,
    *,
    per_class: int | None = None,
    val_per_class: int | None = None,
    classes: list[str] | None = None,
    val_fraction: float = 0.2,
    data_seed: int = 0,
    command: str | None = None,
    report: bool = True,
) -> dict | None:
    """Train every strategy × seed into `out/runs/`, skipping finished runs; write summary.json and the
    reports; return the summary. Ctrl-C stops after the current run's checkpoint: run it again to finish.
    With `base.devices` > 1 every run is data-parallel (see `pipeline.train`); the extra processes return None."""
    if not strategies or not seeds:
        raise HeadstartError("give at least one strategy and one seed")
    if len(set(strategies)) != len(strategies) or len(set(seeds)) != len(seeds):
        raise HeadstartError("strategies and seeds must not repeat")
    specs = [strategy_for_label(label) for label in strategies]  # unknown names fail here, before any training
    base = base or TrainConfig(patience=None)
    # with --devices N the other processes start here, before anything is read, so all of them see the same
    # finished runs when they decide what is left to do
    first = engine.start(base.device, base.devices).is_global_zero
    epochs = base.epochs or max(spec.epochs for spec in specs)
    augment = base.augment or DEFAULT_AUGMENT
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    splits = data if isinstance(data, DataSplits) else load_data(
        data, val_fraction=val_fraction, seed=data_seed, classes=classes, per_class=per_class)
    if val_per_class:
        splits = replace(splits, val=first_per_class(splits.val, val_per_class))

    cells = [(s, seed) for seed in seeds for s in strategies]  # seed-major: each finished seed is a full comparison
    data = data_identity(splits, per_class, data_seed)
    todo = [(s, seed) for s, seed in cells
            if not is_finished(run_dir(out, s, seed), run_config(base, s, seed, epochs, augment), data)]
    info(f"compare: {len(strategies)} strategies × {len(seeds)} seeds = {len(cells)} runs, "
         f"{len(cells) - len(todo)} already finished · {epochs} epochs · augment {augment} · "
         f"{len(splits.train)} train / {len(splits.val)} val images")
    for i, (strategy, seed) in enumerate(todo, 1):
        info(f"[bold]run {i}/{len(todo)}: {strategy}, seed {seed}[/]")
        cfg = run_config(base, strategy, seed, epochs, augment)
        run = train_run(splits, cfg, run_dir(out, strategy, seed), per_class=per_class, command=command)
        if run is None:  # an extra process: the first one writes the run
            continue
        if run.get("interrupted"):
            info(f"interrupted: {len(todo) - i + 1} runs left; run the same command again to finish them")
            raise KeyboardInterrupt
    if not first:
        return None
    summary = summarize(out, strategies, seeds)
    summary["setup"] = {"data": splits.source, "classes": splits.classes, "n_train": len(splits.train),
                        "n_val": len(splits.val), "per_class": per_class, "val_per_class": val_per_class,
                        "data_seed": data_seed, "model": base.model, "image_size": summary.pop("image_size"),
                        "epochs": epochs, "augment": augment, "seeds": list(seeds), "strategies": list(strategies),
                        "command": command, "environment": summary.pop("environment")}
    write_json(out / SUMMARY_FILE, summary)
    if report:
        html_path = write_compare_report(out, summary)
        write_compare_markdown(out, summary)
        info(f"report: {html_path}")
    return summary


def run_stats(directory: Path) -> dict:
    """One run's numbers, from its history.csv (accuracies) and run.json (time, parameter counts)."""
    history = read_history(directory / HISTORY_FILE)
    run = read_run(directory)
    last = history[-1]
    return {
        "seed": run["seed"],
        "val_accuracy": max(r["val_accuracy"] for r in history),  # best epoch: its weights are the ones kept
        "best_epoch": max(history, key=lambda r: r["val_accuracy"])["epoch"],
        "final_train_accuracy": last["train_accuracy"],
        "final_val_accuracy": last["val_accuracy"],
        "gap": last["train_accuracy"] - last["val_accuracy"],  # overfitting: train − val at the same (last) epoch
        "wall_seconds": run["train_seconds"],
        "trainable_params": run["trainable_params_max"],
        "epochs": len(history),
    }


def read_strategy(directory: Path) -> Strategy:
    """The strategy a finished run trained under, as resolved then (config.json)."""
    return Strategy.from_dict(json.loads((directory / CONFIG_FILE).read_text())["strategy"])


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1); the std of a single seed is 0."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(out: str | Path, strategies: list[str], seeds: list[int]) -> dict:
    """Per strategy, mean and std over seeds of every number in `run_stats`; the winner and its margin."""
    out = Path(out)
    table: dict[str, dict] = {}
    image_size = environment = None
    for name in strategies:
        runs = [run_stats(run_dir(out, name, seed)) for seed in seeds]
        spec = read_strategy(run_dir(out, name, seeds[0]))
        row: dict = {"description": spec.description, "trains": what_trains(spec), "pretrained": spec.pretrained,
                     "n_seeds": len(runs)}
        for key in ("val_accuracy", "final_train_accuracy", "gap", "wall_seconds", "trainable_params"):
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std([r[key] for r in runs])
        row["runs"] = runs
        table[name] = row
        first = read_run(run_dir(out, name, seeds[0]))
        image_size, environment = first["image_size"], first["environment"]
    ranked = sorted(table, key=lambda s: table[s]["val_accuracy_mean"], reverse=True)
    winner = ranked[0]
    summary = {"winner": winner, "strategies": table, "ranking": ranked,
               "image_size": image_size, "environment": environment}
    if len(ranked) > 1:
        runner_up = ranked[1]
        summary["runner_up"] = runner_up
        summary["margin"] = table[winner]["val_accuracy_mean"] - table[runner_up]["val_accuracy_mean"]
        # Is the lead bigger than the seed-to-seed spread? With one seed there is no spread to judge by.
        spread = max(table[winner]["val_accuracy_std"], table[runner_up]["val_accuracy_std"])
        summary["margin_exceeds_spread"] = summary["margin"] > spread if len(seeds) > 1 else None
    return summary
