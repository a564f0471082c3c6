"""The controlled experiment: several strategies × seeds on the same data, judged on test images nothing was
selected on, with intervals and a verdict.

    load_data once (one split, one subsample: every run sees the same images) -- or kfold_splits (K folds)
      -> for seed, fold, strategy: one cell, pipeline.train(...) into out/runs/<strategy>-seed<seed>
         (or <strategy>-fold<k>-seed<seed>); finished runs whose images match are skipped; the executor runs the
         rest one after another here, or side by side as Ray tasks (executors.py); a cell that fails is recorded
      -> summarize(out): per strategy the test metric with its 95% interval (stats.metric_interval), the
         verdict (stats.verdict: a winner only when it beats every other; otherwise the tied set, and the
         cheapest of it recommended), the selection figures kept apart -> summary.json, report.html, report.md

Three roles: each run trains on train and selects its best epoch on val; the test images are scored once per
run and only they are reported. A comparison without test images would report the best of several epochs on
the very images that chose them, so `compare` refuses to run without a test split or folds. With `folds=K`
every labelled image is a test image once: each fold trains and selects inside the other K − 1 parts, and the
reported figure pools the out-of-fold predictions (every image predicted by a model that never saw it).

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
import math
import statistics
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from headstart import engine
from headstart.analysis.recommend import placement
from headstart.report.html import write_compare_report
from headstart.report.markdown import write_compare_markdown
from headstart.backbones import resolve_backbone
from headstart.cache import decode_images, describe_use
from headstart.console import info, warn
from headstart.data import DataSplits, kfold_splits, load_data, role_fingerprints
from headstart.errors import HeadstartError
from headstart.evaluate import classification_metrics
from headstart.executors import Cell, CellOutcome, RayExecutor, SerialExecutor
from headstart.paths import cache_root
from headstart.pipeline import train as train_run
from headstart.precision import precision_plan
from headstart.runs import (
    CONFIG_FILE, HISTORY_FILE, RUN_FILE, SUMMARY_FILE, cell_dir, read_history, read_run, read_test_predictions,
    run_folder_lock, write_json,
)
from headstart.stats import Cost, RunPredictions, choose_metric, verdict
from headstart.strategies import Strategy, parse_label, strategy_for_label, trains_batchnorm, what_trains
from headstart.train import TrainConfig, batchnorm_parts, default_views, ghost_batch_norm_size, resolve_strategy

DEFAULT_AUGMENT = "light"
# Settings that change what a run computes: a finished run is reused only when all of them match.
_RUN_IDENTITY = ("model", "strategy", "epochs", "batch_size", "lr", "head_lr", "lr_decay", "train_last", "optimizer",
                 "weight_decay", "label_smoothing", "warmup_epochs", "augment", "views", "freeze_bn", "patience", "seed",
                 "image_size", "weights", "balance")
NO_TEST = ("compare reports test figures, and {source} has no test split: use --val-as-test (its val/ becomes "
           "test), --test-fraction F (hold out a share) or --folds K (cross-validation)")


def run_config(base: TrainConfig, label: str, seed: int, epochs: int, augment: str) -> TrainConfig:
    """The TrainConfig of one cell of the experiment: `base` with the strategy, seed and shared settings.
    The views are spelled out (`train.default_views` unless `base` says), so the run's config records them."""
    name, k = parse_label(label)
    cfg = replace(base, strategy=name, train_last=k if k is not None else base.train_last, seed=seed, epochs=epochs,
                  augment=augment, resume=True)  # an interrupted cell continues from its last whole epoch
    strategy = resolve_strategy(cfg)
    views = base.views if base.views is not None else default_views(strategy, epochs, augment)
    ghost = base.ghost_batch_norm if trains_batchnorm(strategy) else None  # the cells whose BatchNorm trains
    return replace(cfg, views=views, ghost_batch_norm=ghost)


def ghost_cells(base: TrainConfig, labels: list[str], epochs: int, augment: str, image_size: int) -> dict | None:
    """Which strategies normalised over parts of their batch (ghost batch norm), and how many images a part: the
    reports say so, since it is the one setting that is not the same for every strategy."""
    cells = {label: run_config(base, label, 0, epochs, augment) for label in labels}
    parts = {label: batchnorm_parts(cfg, resolve_strategy(cfg), image_size) for label, cfg in cells.items()}
    using = [label for label, size in parts.items() if size]
    return {"images": parts[using[0]], "strategies": using} if using else None


def data_identity(splits: DataSplits, per_class: int | None, data_seed: int) -> dict:
    """What makes two runs' data the same: where it came from, which classes, which subsample and split, how many
    val and test images, and above all the content of every role (`data.role_fingerprints`: the same counts with
    another image in them is other data). `pipeline.train` records the same keys in config.json."""
    return {"data": _resolved(splits.source), "classes": list(splits.classes), "per_class": per_class,
            "data_seed": data_seed, "val_files": len(splits.val),
            "test_files": len(splits.test) if splits.test is not None else 0,
            "fingerprints": role_fingerprints(splits)}


def _resolved(source: str) -> str:
    """A folder or CSV as an absolute path, so a run started from another working directory still matches."""
    path = Path(source)
    return str(path.resolve()) if path.exists() else source


def resolved_precision(config: dict, cfg: TrainConfig) -> dict | None:
    """What `cfg`'s precision resolves to here, when it can be held against a finished run's config: the run
    recorded its resolved plan and ran on this kind of device. `auto` follows the parity measured per machine
    (precision.AUTO_BF16), so the same request can mean fp32 in an old run and bf16 now: another experiment."""
    device = engine.pick_device(cfg.device)
    if "precision" not in config or config.get("environment", {}).get("device") != device.type:
        return None  # older runs, or a run made on another kind of device (a GPU worker of a cluster)
    return precision_plan(cfg.precision, device)


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
    differ = [f"{k}: {done.get(k)} vs {wanted.get(k)}" for k in _RUN_IDENTITY if done.get(k) != wanted.get(k)]
    if done.get("precision", "auto") != wanted.get("precision", "auto"):  # runs before --precision ran as auto
        differ.append(f"precision: {done.get('precision', 'auto')} vs {wanted.get('precision', 'auto')}")
    elif (plan := resolved_precision(config, cfg)) is not None and plan != config["precision"]:
        differ.append(f"precision as resolved: {config['precision']} then vs {plan} now")
    recorded = {**config, "data": _resolved(config.get("data", ""))}
    data = dict(data or {})
    fingerprints = data.pop("fingerprints", None)
    differ += [f"{k}: {recorded.get(k)} vs {v}" for k, v in data.items()
               if k in config and recorded.get(k) != v]  # (runs older than a descriptive key are not held to it)
    if fingerprints is not None:  # ... but to the content, always: a run that cannot show it is not reused
        then = config.get("fingerprints")
        if then is None:
            differ.append("images: the run predates content fingerprints")
        elif then != fingerprints:
            roles = [r for r in ("train", "val", "test") if then.get(r) != fingerprints.get(r)]
            differ.append(f"images: other {', '.join(roles)} images (same settings, different content)")
    # ghost batch norm as it was resolved then (runs before its automatic default: the part size they asked for,
    # no request meaning the whole batch)
    size = config["preprocessing"]["image_size"]
    then_parts = config["batchnorm_parts"] if "batchnorm_parts" in config else ghost_batch_norm_size(
        done.get("ghost_batch_norm") or 0, math.ceil(cfg.batch_size / cfg.devices), size)
    now_parts = batchnorm_parts(cfg, resolve_strategy(cfg), size)
    if then_parts != now_parts:
        differ.append(f"images per BatchNorm part (--ghost-bn): {then_parts} then vs {now_parts} now")
    # the strategy as it was resolved then: a default changed in the code since makes it another experiment
    spec = json.loads(json.dumps(resolve_strategy(cfg).to_dict()))
    if "strategy" in config and config["strategy"] != spec:
        old, new = _spec_diff(config["strategy"], spec)
        differ.append(f"strategy spec: {old} vs {new}")
    if differ:
        raise HeadstartError(f"{directory} holds a run with other settings ({'; '.join(differ)}); "
                             "use another --out, or delete that folder to redo it")
    return True


def _spec_diff(old: dict, new: dict) -> tuple[dict, dict]:
    keys = [k for k in new if old.get(k) != new.get(k)]
    return {k: old.get(k) for k in keys}, {k: new[k] for k in keys}


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
    test_fraction: float = 0.0,
    val_as_test: bool = False,
    folds: int | None = None,
    command: str | None = None,
    report: bool = True,
    executor: SerialExecutor | RayExecutor | None = None,
) -> dict | None:
    """Train every strategy × seed (× fold) into `out/runs/`, skipping finished runs; write summary.json and the
    reports; return the summary. Ctrl-C stops after the current run's checkpoint: run it again to finish.

    The test images come from the data (a test/ folder, a CSV's test rows, Fashion-MNIST's t10k), from
    `val_as_test` (its val/ becomes test), from `test_fraction` (held out of unsplit data) or from `folds`
    (K-fold cross-validation); without any of them compare refuses, before training anything.
    `val_per_class` caps val (data.subsample_per_class, with `data_seed`).
    With `base.devices` > 1 every run is data-parallel (see `pipeline.train`); the extra processes return None.

    `executor` runs the cells: `SerialExecutor()` (the default) one after another here, `RayExecutor(...)` as
    Ray tasks (see `headstart.executors`). Either way a cell that raises is recorded and the others go on: the
    summary's `failed` lists it with its error, its strategy is left out of the verdict (`left_out`; its other
    seeds would not be paired with the rest), and the next run of the same comparison tries it again."""
    if not strategies or not seeds:
        raise HeadstartError("give at least one strategy and one seed")
    if len(set(strategies)) != len(strategies) or len(set(seeds)) != len(seeds):
        raise HeadstartError("strategies and seeds must not repeat")
    specs = [strategy_for_label(label) for label in strategies]  # unknown names fail here, before any training
    base = base or TrainConfig(patience=None)
    epochs = base.epochs or max(spec.epochs for spec in specs)
    augment = base.augment or DEFAULT_AUGMENT
    executor = cell_executor(executor, base)
    executor.check()  # (without Ray installed: how to install it, before any data is read)
    fold_splits = experiment_splits(data, folds, val_fraction=val_fraction, data_seed=data_seed, classes=classes,
                                    per_class=per_class, val_per_class=val_per_class, test_fraction=test_fraction,
                                    val_as_test=val_as_test)
    # with --devices N the other processes start here, before any run directory is read, so all of them see the
    # same finished runs when they decide what is left to do (cells on Ray train elsewhere: the driver needs no device)
    first = executor.parallel or engine.start(base.device, base.devices).is_global_zero
    out = Path(out)
    # one process writes into a comparison folder: a second compare --out into it stops at once, naming the first
    with run_folder_lock(out) if first else nullcontext():
        fold_ids = list(range(1, folds + 1)) if folds else [None]
        identities = {k: data_identity(fold_splits[i], per_class, data_seed) for i, k in enumerate(fold_ids)}
        # seed-major: each finished seed is a full comparison
        cells = [Cell(s, seed, k, run_config(base, s, seed, epochs, augment), cell_dir(out, s, seed, k))
                 for seed in seeds for k in fold_ids for s in strategies]
        todo = [c for c in cells if not is_finished(c.directory, c.cfg, identities[c.fold])]
        splits = fold_splits[0]
        folds_note = f" × {folds} folds" if folds else ""
        sizes = (f"{len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test images" if not folds else
                 f"{sum(len(f.test) for f in fold_splits)} images, each tested once per seed")
        info(f"compare: {len(strategies)} strategies × {len(seeds)} seeds{folds_note} = {len(cells)} runs, "
             f"{len(cells) - len(todo)} already finished · {epochs} epochs · augment {augment} · {sizes}")
        if len(seeds) == 2 and not folds:
            warn("2 seeds measure the seed-to-seed variance with one degree of freedom: where they disagree, the "
                 "intervals take Student-t tails with 1 degree of freedom and most differences read as ties; "
                 "3 or more seeds (or --folds) resolve more")
        if executor.parallel and todo:
            todo = shared_cache(todo, base)
            warm_decoded_store(fold_splits, todo[0].cfg)
        work = CellWork(fold_splits, fold_ids, per_class, data_seed, command, train_run)
        outcomes = executor.run(todo, work) if todo else []
        if not first:
            return None
        failed = [o for o in outcomes if o.failed]
        complete = [s for s in strategies if not any(o.cell.strategy == s for o in failed)]
        if not complete:
            raise HeadstartError(f"every strategy has a failed run ({len(failed)} of {len(todo)} failed); the first, "
                                 f"{failed[0].cell.name}: {failed[0].error}")
        summary = summarize(out, complete, seeds, folds=folds, num_classes=len(splits.classes))
        summary["failed"] = [failure_record(out, o) for o in failed]
        summary["left_out"] = [s for s in strategies if s not in complete]
        image_size = summary.pop("image_size")
        summary["setup"] = {"data": splits.source, "classes": splits.classes, "n_train": len(splits.train),
                            "n_val": len(splits.val), "n_test": summary["n_test"], "per_class": per_class,
                            "val_per_class": val_per_class, "test_fraction": test_fraction, "val_as_test": val_as_test,
                            "folds": folds, "roles": splits.roles if not folds else _folds_roles(splits.roles, folds),
                            "evidence": evidence_note(fold_splits, folds, summary["n_test"], summary["selected_on"]),
                            "data_seed": data_seed, "model": base.model, "image_size": image_size,
                            "epochs": epochs, "augment": augment, "seeds": list(seeds), "strategies": complete,
                            "command": command, "environment": summary.pop("environment"),
                            "ghost_batch_norm": ghost_cells(base, complete, epochs, augment, image_size),
                            "placement": placement(splits, base)}  # its cell of the lesson's 2 × 2
        write_json(out / SUMMARY_FILE, summary)
        if failed:
            warn(f"{len(failed)} of {len(todo)} runs failed; left out of the verdict: {', '.join(summary['left_out'])} "
                 f"(errors in {out / SUMMARY_FILE}, 'failed'; run the same command again to retry them)")
        if report:
            html_path = write_compare_report(out, summary)
            write_compare_markdown(out, summary)
            info(f"report: {html_path}")
        return summary


@dataclass(frozen=True)
class CellWork:
    """What every cell of one experiment does, wherever it runs: `train` (pipeline.train) on its fold's split,
    with its own config, into its own directory. It carries the split itself (not the arguments that make it),
    so a worker on another machine trains on exactly the driver's images, by content."""

    fold_splits: list[DataSplits]
    fold_ids: list[int | None]
    per_class: int | None
    data_seed: int
    command: str | None
    train: Callable[..., dict | None]

    def __call__(self, cell: Cell) -> dict | None:
        return self.train(self.fold_splits[self.fold_ids.index(cell.fold)], cell.cfg, cell.directory,
                          per_class=self.per_class, data_seed=self.data_seed, command=self.command)


def cell_executor(executor: SerialExecutor | RayExecutor | None, base: TrainConfig) -> SerialExecutor | RayExecutor:
    """The executor of this experiment; with --devices N, serial and stopping at the first error (every process
    runs every cell in step with the others: see `SerialExecutor`)."""
    if base.devices > 1:
        if executor is not None and executor.parallel:
            raise HeadstartError("--devices N spreads one run over N processes; --executor ray spreads the runs: "
                                 "use one of them (with ray, --gpus-per-cell)")
        return SerialExecutor(keep_going=False)
    return executor or SerialExecutor()


def shared_cache(cells: list[Cell], base: TrainConfig) -> list[Cell]:
    """The cells with the cache folder spelled out as the driver sees it, so every worker reads and fills the same
    one (not its own $HEADSTART_CACHE or home folder); on several machines it must be shared storage."""
    folder = str(cache_root(base.cache_dir).resolve())
    return [replace(c, cfg=replace(c.cfg, cache_dir=folder)) for c in cells]


def warm_decoded_store(fold_splits: list[DataSplits], cfg: TrainConfig) -> None:
    """Decode every role's images into the cache before the cells start, once, in this process: cells that run
    side by side then all read the entries instead of queueing on their locks (`cache.cached_entry`: the first
    decodes, the rest wait with their CPUs reserved). The key is the one `pipeline.decode_split` computes: the
    images' content and the backbone's store geometry at `cfg.image_size`, the same for every strategy."""
    if not cfg.use_cache:
        return
    pre = resolve_backbone(cfg.model).preprocessing.with_image_size(cfg.image_size)
    for splits in fold_splits:
        for role, images in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
            if images is not None:
                decode_images(images, pre, cfg.cache_dir, label=f"decode {role}")


def failure_record(out: Path, outcome: CellOutcome) -> dict:
    """A failed cell as summary.json keeps it: which cell, where, the error in one line and the traceback."""
    cell = outcome.cell
    return {"strategy": cell.strategy, "seed": cell.seed, "fold": cell.fold,
            "run_dir": cell.directory.relative_to(out).as_posix(), "error": outcome.error, "details": outcome.details}


def experiment_splits(data: str | Path | DataSplits, folds: int | None, *, val_fraction: float, data_seed: int,
                      classes: list[str] | None, per_class: int | None, val_per_class: int | None,
                      test_fraction: float, val_as_test: bool) -> list[DataSplits]:
    """The data of every cell: one split with a test role, or the K folds of a cross-validation. Refuses (one
    line, with the way out) data that would leave nothing to report on."""
    if folds is not None:
        if test_fraction or val_as_test:
            raise HeadstartError("--folds makes every image a test image once: drop --test-fraction and --val-as-test")
        if isinstance(data, DataSplits):
            raise HeadstartError("folds need the data source (a folder, CSV or name), not DataSplits")
        return kfold_splits(data, folds, seed=data_seed, val_fraction=val_fraction, classes=classes,
                            per_class=per_class, val_per_class=val_per_class)
    splits = data if isinstance(data, DataSplits) else load_data(
        data, val_fraction=val_fraction, seed=data_seed, classes=classes, per_class=per_class,
        test_fraction=test_fraction, val_as_test=val_as_test, val_per_class=val_per_class)
    if splits.test is None:
        raise HeadstartError(NO_TEST.format(source=splits.source))
    return [splits]


def _folds_roles(roles: str, folds: int) -> str:
    return f"{folds}-fold cross-validation; fold 1: {roles}"


def evidence_note(fold_splits: list[DataSplits], folds: int | None, n_test: int, selected_on: str) -> str:
    """What was selected on what, in one line (the reports print it in small type)."""
    metric = selected_on.replace("_", " ")
    if folds:
        n_val = statistics.fmean(len(f.val) for f in fold_splits)
        return (f"{folds}-fold cross-validation: in each fold the best epoch was chosen by {metric} on that fold's "
                f"own ~{n_val:,.0f} val images; figures pool the out-of-fold predictions of all {n_test:,} "
                "images, each predicted by models that never saw it")
    splits = fold_splits[0]
    per_class = _per_class_phrase(splits.val)
    return (f"best epoch chosen by {metric} on {len(splits.val):,} val images{per_class}; figures on {n_test:,} "
            "test images nothing was selected on")


def _per_class_phrase(images) -> str:
    counts = [n for n in images.counts().values() if n > 0]
    if not counts:
        return ""
    return f" ({counts[0]:,}/class)" if min(counts) == max(counts) else f" ({min(counts):,}-{max(counts):,}/class)"


def run_stats(out: Path, directory: Path) -> dict:
    """One run's numbers, from its history.csv, run.json and test_predictions.csv."""
    history = read_history(directory / HISTORY_FILE)
    run = read_run(directory)
    last, best = history[-1], history[run["best_epoch"] - 1]
    selected_on = run.get("selected_on", "val_accuracy")
    return {
        "seed": run["seed"],
        "run_dir": directory.relative_to(out).as_posix(),
        "val_accuracy_best": best["val_accuracy"],  # the selection figure: the best epoch's, on the images that chose it
        "selected_on": selected_on,
        "selection_score": best.get(selected_on, best["val_accuracy"]),
        "best_epoch": run["best_epoch"],
        "test_accuracy": run.get("test_accuracy"),
        "test_balanced_accuracy": run.get("test_balanced_accuracy"),
        "test_metric": run.get("test_metric"),
        "final_train_accuracy": last["train_accuracy"],
        "final_val_accuracy": last["val_accuracy"],
        "gap": last["train_accuracy"] - last["val_accuracy"],  # overfitting: train − val at the same (last) epoch
        "wall_seconds": run["train_seconds"],
        "trainable_params": run["trainable_params_max"],
        "epochs": len(history),
        "cache": cache_use(run.get("cache")),
    }


def cache_use(records: list[dict] | None) -> dict | None:
    """What one run computed and what it found computed already (run.json `cache`), in words and seconds; None
    for runs from before that record."""
    if records is None:
        return None
    computed, reused = [r for r in records if not r["reused"]], [r for r in records if r["reused"]]
    return {"computed": [describe_use(r) for r in computed], "reused": [describe_use(r) for r in reused],
            "seconds_computed": round(sum(r["seconds"] or 0 for r in computed), 1),
            "seconds_saved": round(sum(r["seconds"] or 0 for r in reused), 1)}


def cache_totals(table: dict[str, dict]) -> dict | None:
    """Over every run of the comparison: entries computed and reused, the seconds computing took and the seconds
    that reusing saved (what the entries' builders had spent)."""
    uses = [r["cache"] for row in table.values() for r in row["runs"] if r["cache"] is not None]
    if not uses:
        return None
    return {"runs": len(uses), "computed": sum(len(u["computed"]) for u in uses),
            "reused": sum(len(u["reused"]) for u in uses),
            "seconds_computed": round(sum(u["seconds_computed"] for u in uses), 1),
            "seconds_saved": round(sum(u["seconds_saved"] for u in uses), 1)}


def read_strategy(directory: Path) -> Strategy:
    """The strategy a finished run trained under, as resolved then (config.json)."""
    return Strategy.from_dict(json.loads((directory / CONFIG_FILE).read_text())["strategy"])


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1); the std of a single seed is 0."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def predictions(directory: Path, strategy: str, seed: int, fold: int | None) -> RunPredictions:
    found = read_test_predictions(directory)
    if found is None:
        raise HeadstartError(f"{directory} has no test predictions (a run from before test figures): delete it and "
                             "run the comparison again")
    ids, y_true, y_pred = found
    return RunPredictions(strategy, fold if fold is not None else seed, np.array(y_true), np.array(y_pred), ids,
                          repeat=seed)


def score(runs: list[RunPredictions], metric: str, classes: int) -> float:
    """The metric of `runs`' predictions pooled (one seed's folds, or one run), by evaluate's one recipe."""
    y_true = torch.as_tensor(np.concatenate([r.y_true for r in runs]))
    y_pred = torch.as_tensor(np.concatenate([r.y_pred for r in runs]))
    logits = torch.nn.functional.one_hot(y_pred, classes).float()
    return classification_metrics(logits, y_true, [str(c) for c in range(classes)])[metric]


def summarize(out: str | Path, strategies: list[str], seeds: list[int], folds: int | None = None,
              num_classes: int | None = None) -> dict:
    """Per strategy: the test metric (mean over seeds, folds pooled) with its 95% interval, per seed; the
    selection figures (val) kept apart; train accuracy, gap, seconds, parameters. Then the verdict."""
    out = Path(out)
    fold_ids = list(range(1, folds + 1)) if folds else [None]
    table: dict[str, dict] = {}
    runs_of: dict[str, list[RunPredictions]] = {}
    image_size = environment = None
    for name in strategies:
        cells = [(seed, k, cell_dir(out, name, seed, k)) for seed in seeds for k in fold_ids]
        runs = [{**run_stats(out, d), "fold": k} for _, k, d in cells]
        runs_of[name] = [predictions(d, name, seed, k) for seed, k, d in cells]
        spec = read_strategy(cells[0][2])
        row: dict = {"description": spec.description, "trains": what_trains(spec), "pretrained": spec.pretrained,
                     "n_seeds": len(seeds), "n_folds": folds, "n_runs": len(runs)}
        for key in ("val_accuracy_best", "selection_score", "final_train_accuracy", "gap", "wall_seconds",
                    "trainable_params"):
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std([r[key] for r in runs])
        row["runs"] = runs
        table[name] = row
        first = read_run(cells[0][2])
        image_size, environment = first["image_size"], first["environment"]
    everything = [r for group in runs_of.values() for r in group]
    classes = num_classes or int(max(max(r.y_true.max(), r.y_pred.max()) for r in everything)) + 1
    pooled = np.concatenate([r.y_true for r in runs_of[strategies[0]] if r.repeat == seeds[0]])
    recorded = {r["test_metric"] for row in table.values() for r in row["runs"]}
    metric = "balanced_accuracy" if "balanced_accuracy" in recorded else choose_metric(pooled)
    costs = {name: Cost(seconds=table[name]["wall_seconds_mean"], trainable_params=int(table[name]["trainable_params_mean"]))
             for name in strategies}
    judged = verdict(everything, costs, metric=metric, num_classes=classes)
    for name in strategies:
        table[name]["test"] = asdict(judged.intervals[name])
        table[name]["test_per_seed"] = [score([r for r in runs_of[name] if r.repeat == seed], metric, classes)
                                        for seed in seeds]
    ranked = sorted(strategies, key=lambda s: judged.intervals[s].estimate, reverse=True)
    selected = {r["selected_on"] for row in table.values() for r in row["runs"]}
    return {"metric": metric, "chance": judged.chance, "winner": judged.winner, "recommended": judged.recommended,
            "best": judged.best, "tied": judged.tied, "sentence": judged.sentence, "verdict": asdict(judged),
            "strategies": table, "ranking": ranked, "n_test": len(pooled),
            "selected_on": "val_balanced_accuracy" if "val_balanced_accuracy" in selected else "val_accuracy",
            "image_size": image_size, "environment": environment, "cache": cache_totals(table)}
