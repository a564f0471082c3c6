"""Which counter to imbalanced training classes should `--balance auto` use? Measured on val, confirmed on test.

    PYTHONPATH=src .venv/bin/python bench/imbalance.py [--strategy linear] [--seeds 0,1,2] [--size 128]

For each dataset, every labelled image (its train/ and val/ pooled) is dealt per class, with seed 0, into test
(T per class), val (V per class) and train (the rest); then the alphabetically first class keeps a fifth of its
training images. Only train is imbalanced (about 5:1): val and test keep equal classes so that every class's
recall is measured on the same number of images. The split goes to a CSV with a `split` column (data.py reads
it); no image is copied.

Every run trains the same strategy, size, epochs and seed with `--balance none`, `weighted` and `sampler`; all of
them choose their best epoch on val balanced accuracy (the training classes are imbalanced). The mode with the
best mean val balanced accuracy over datasets and seeds is the one to make `auto`; its test balanced accuracy
against `none` (paired, same test images) is the confirmation nothing was selected on.
Results: bench/results/imbalance-<strategy>.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from headstart.data import load_class_folders
from headstart.pipeline import train
from headstart.runs import read_test_predictions
from headstart.stats import RunPredictions, paired_difference
from headstart.train import TrainConfig

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATASETS = {"blood-cells-pbc": (40, 30), "hymenoptera": (60, 40)}  # name: (test, val) images per class
MODES = ("none", "weighted", "sampler")
RESULTS = Path(__file__).resolve().parent / "results"


def imbalanced_csv(name: str, folder: Path, out: Path, test: int, val: int, fraction: int = 5, seed: int = 0) -> Path:
    rows, rng = [], random.Random(seed)
    pooled = {}
    for split in ("train", "val"):
        images, _ = load_class_folders(SHARED / name / split)
        for ref, y in zip(images.refs, images.labels):
            pooled.setdefault(images.classes[y], []).append(ref)
    rare = sorted(pooled)[0]
    for label in sorted(pooled):
        refs = sorted(pooled[label])
        rng.shuffle(refs)
        train_refs = refs[test + val:]
        if label == rare:
            train_refs = train_refs[: len(train_refs) // fraction]
        rows += [(r, label, "test") for r in refs[:test]] + [(r, label, "val") for r in refs[test:test + val]]
        rows += [(r, label, "train") for r in train_refs]
    path = out / f"{name}-imbalanced.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        writer.writerows(rows)
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", default="linear")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--datasets", default=",".join(DATASETS))
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(tempfile.mkdtemp(prefix="imbalance-"))
    results, started = [], time.time()
    for name in args.datasets.split(","):
        data = imbalanced_csv(name, SHARED / name, work, *DATASETS[name])
        for seed in seeds:
            for mode in MODES:
                cfg = TrainConfig(strategy=args.strategy, image_size=args.size, epochs=args.epochs, seed=seed,
                                  balance=mode, patience=None, cache_dir=str(work / "cache"))
                out = work / "runs" / f"{name}-{mode}-seed{seed}"
                run = train(data, cfg, out, command="bench/imbalance.py")
                ids, y_true, y_pred = read_test_predictions(out)
                rare = run["classes"][0]
                results.append({"dataset": name, "mode": mode, "seed": seed, "class_counts": run["class_counts"],
                                "selected_on": run["selected_on"], "best_epoch": run["best_epoch"],
                                "val_balanced_accuracy_best": run["val_balanced_accuracy_best"],
                                "val_accuracy_best": run["val_accuracy_best"],
                                "test_balanced_accuracy": run["test_balanced_accuracy"],
                                "test_accuracy": run["test_accuracy"],
                                "test_recall_rare": run["test_metrics"]["per_class"][rare]["recall"],
                                "train_seconds": run["train_seconds"], "ids": ids, "y_true": y_true, "y_pred": y_pred})
    summary = {}
    for mode in MODES:
        mine = [r for r in results if r["mode"] == mode]
        summary[mode] = {key: statistics.fmean(r[key] for r in mine) for key in
                         ("val_balanced_accuracy_best", "test_balanced_accuracy", "test_accuracy", "test_recall_rare")}
        summary[mode]["per_dataset"] = {
            name: {key: statistics.fmean(r[key] for r in mine if r["dataset"] == name)
                   for key in ("val_balanced_accuracy_best", "test_balanced_accuracy", "test_recall_rare")}
            for name in args.datasets.split(",")}
    chosen = max(("weighted", "sampler"), key=lambda m: summary[m]["val_balanced_accuracy_best"])
    confirmations = {}
    for name in args.datasets.split(","):
        def runs(mode):
            return [RunPredictions(mode, r["seed"], np.array(r["y_true"]), np.array(r["y_pred"]), r["ids"])
                    for r in results if r["dataset"] == name and r["mode"] == mode]
        d = paired_difference(runs(chosen), runs("none"), metric="balanced_accuracy")
        confirmations[name] = {"difference": d.difference, "low": d.low, "high": d.high, "p_value": d.p_value}
    record = {"command": " ".join(["bench/imbalance.py", *sys.argv[1:]]), "strategy": args.strategy,
              "image_size": args.size, "seeds": seeds, "chosen_on_val": chosen, "summary": summary,
              "test_difference_chosen_minus_none": confirmations, "minutes": (time.time() - started) / 60,
              "runs": [{k: v for k, v in r.items() if k not in ("ids", "y_true", "y_pred")} for r in results]}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"imbalance-{args.strategy}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: record[k] for k in ("chosen_on_val", "summary", "test_difference_chosen_minus_none",
                                              "minutes")}, indent=1))


if __name__ == "__main__":
    main()
