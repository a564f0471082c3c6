"""How many deliberately flipped labels does `headstart check --labels` find? Measured on hymenoptera.

    PYTHONPATH=src .venv/bin/python bench/label_issues.py [--flip 0.05] [--seeds 0,1,2,3,4] [--folds 5]

For each seed, `--flip` of hymenoptera's training images (drawn with that seed) get the other class's label;
val keeps its labels. The result goes to a CSV (`path,label,split`, data.py reads it; no image is copied) and
`api.find_label_issues` runs on it exactly as `check --labels` does. Precision: the share of the reported
images that were flipped; recall: the share of the flipped images that were reported. Also the precision of
the top k of the ranking with k = the number flipped (what a person who looks at that many images finds).

The same flips are also scored at every fixed L2 strength of the grid (`--sensitivity`), to show what the
choice by out-of-fold log-loss gives up or gains against each.

The original labels are run too (no flip): what the finder reports there is either a genuine label error of
hymenoptera or a false alarm, and it counts against precision in every flipped run. The features are computed
once (the image content, not the labels, keys the cache), so each seed costs only the regressions.
Results: bench/results/label-issues.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from headstart.analysis.labels import C_GRID, out_of_fold_probabilities, pooled_features, ranked_issues
from headstart.api import find_label_issues
from headstart.backbones import load_backbone
from headstart.data import load_class_folders, load_data

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"


def flipped_csv(data: Path, out: Path, fraction: float, seed: int | None) -> tuple[Path, set[str]]:
    """data's train and val as a CSV, with `fraction` of the training labels moved to another class (none when
    `seed` is None); returns the CSV and the flipped paths."""
    rows, flipped = [], set()
    train, _ = load_class_folders(data / "train")
    val, _ = load_class_folders(data / "val")
    labels = [train.classes[y] for y in train.labels]
    if seed is not None:
        rng = random.Random(seed)
        for i in rng.sample(range(len(labels)), round(fraction * len(labels))):
            labels[i] = rng.choice([c for c in train.classes if c != labels[i]])
            flipped.add(train.refs[i])
    rows += [(ref, label, "train") for ref, label in zip(train.refs, labels)]
    rows += [(ref, val.classes[y], "val") for ref, y in zip(val.refs, val.labels)]
    path = out / f"flip-{seed}.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        writer.writerows(rows)
    return path, flipped


def score(reported: list[str], flipped: set[str]) -> dict:
    hits = [p for p in reported if p in flipped]
    top = reported[: len(flipped)]
    return {"reported": len(reported), "flipped": len(flipped), "found": len(hits),
            "precision": round(len(hits) / len(reported), 4) if reported else None,
            "recall": round(len(hits) / len(flipped), 4) if flipped else None,
            "precision_at_k": round(sum(p in flipped for p in top) / len(flipped), 4) if flipped else None}


def fixed_c_scores(path: Path, flipped: set[str], model, folds: int) -> dict:
    """Precision and recall at each fixed C of the grid, on the same flips (features from the cache)."""
    train = load_data(path).train
    features, kept = pooled_features(model, train)
    labels = np.asarray([train.labels[i] for i in kept])
    out = {}
    for c in C_GRID:
        probabilities, _, _ = out_of_fold_probabilities(features, labels, folds, grid=(c,))
        out[str(c)] = score([train.refs[kept[i]] for i in ranked_issues(labels, probabilities)], flipped)
    return out


def mean_scores(runs: list[dict]) -> dict:
    return {k: round(statistics.mean(r[k] for r in runs), 4) for k in ("precision", "recall", "precision_at_k")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED / "hymenoptera"))
    parser.add_argument("--flip", type=float, default=0.05)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--sensitivity", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    data = Path(args.data)
    seeds = [int(s) for s in args.seeds.split(",")]
    runs, fixed = {}, {}
    net = load_backbone(args.model) if args.sensitivity else None
    with tempfile.TemporaryDirectory() as tmp:
        for seed in [None, *seeds]:
            path, flipped = flipped_csv(data, Path(tmp), args.flip, seed)
            t0 = time.perf_counter()
            report = find_label_issues(path, model=args.model, folds=args.folds)
            reported = [i.path for i in report.issues]
            name = "original" if seed is None else f"seed {seed}"
            runs[name] = {**score(reported, flipped), "seconds": round(time.perf_counter() - t0, 1),
                          "oof_accuracy": report.oof_accuracy, "n_images": report.n_images,
                          "missed": sorted(Path(p).name for p in flipped - set(reported)),
                          "reported_not_flipped": [Path(p).name for p in reported if p not in flipped]}
            runs[name]["c"] = report.c
            print(name, {k: v for k, v in runs[name].items() if k not in ("missed", "reported_not_flipped")})
            if net is not None and seed is not None:
                fixed[name] = fixed_c_scores(path, flipped, net, args.folds)
    flips = [runs[f"seed {s}"] for s in seeds]
    summary = mean_scores(flips)
    summary.update({f"{k}_range": [min(r[k] for r in flips), max(r[k] for r in flips)]
                    for k in ("precision", "recall")})
    result = {"data": str(data), "model": args.model, "image_size": report.image_size, "flip": args.flip,
              "folds": args.folds, "seeds": seeds, "method": "cleanlab.filter.find_label_issues (ranked by self_confidence) on "
              "cross_val_predict(StandardScaler + LogisticRegression(C), StratifiedKFold, predict_proba) of the "
              f"frozen pooled features; C from {list(C_GRID)} by out-of-fold log-loss on the given labels",
              "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
                         f"{'cuda' if torch.cuda.is_available() else 'CPU only'}",
              "summary": summary, "runs": runs}
    if fixed:
        result["fixed_c"] = {str(c): mean_scores([fixed[f"seed {s}"][str(c)] for s in seeds]) for c in C_GRID}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "label-issues.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
