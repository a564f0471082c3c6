"""Does a group that unfreezes mid-run (gradual, lp-ft) need a warm-up of its own? Measured on val only.

Without one, a group that unfreezes at epoch e starts at the schedule's already-decayed LR with an empty
optimizer state (AdamW's first steps are the largest). `--unfreeze-warmup-epochs W` ramps each such group from 1%
of its LR over W epochs. This script trains gradual and lp-ft with W = 0 and W = 0.5 on the same data and seeds
and compares best val accuracy on a dev split: hymenoptera's train/ folder alone, split 80/20 stratified (its
val/ folder, where headstart's figures are reported, plays no part in the choice).

    PYTHONPATH=src python bench/unfreeze_warmup.py   ->  bench/results/unfreeze-warmup.json
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from headstart.api import TrainConfig, train
from headstart.data import load_data

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera" / "train"
OUT = Path(__file__).resolve().parent / "results" / "unfreeze-warmup.json"
SETTINGS = dict(val_fraction=0.2, image_size=96, epochs=5, seeds=(0, 1), warmups=(0.0, 0.5))


def main() -> None:
    splits = load_data(DATA, val_fraction=SETTINGS["val_fraction"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in ("gradual", "lp-ft"):
            for warmup in SETTINGS["warmups"]:
                for seed in SETTINGS["seeds"]:
                    cfg = TrainConfig(strategy=strategy, epochs=SETTINGS["epochs"], image_size=SETTINGS["image_size"],
                                      seed=seed, patience=None, unfreeze_warmup_epochs=warmup, monitor_folder="none")
                    t0 = time.perf_counter()
                    run = train(splits, cfg, Path(tmp) / f"{strategy}-{warmup}-{seed}")
                    rows.append({"strategy": strategy, "unfreeze_warmup_epochs": warmup, "seed": seed,
                                 "val_accuracy_best": run["best_val_accuracy"],
                                 "val_accuracy_final": run["final_val_accuracy"], "seconds": time.perf_counter() - t0})
                    print(rows[-1], file=sys.stderr, flush=True)
    summary = {}
    for strategy in ("gradual", "lp-ft"):
        for warmup in SETTINGS["warmups"]:
            chosen = [r for r in rows if r["strategy"] == strategy and r["unfreeze_warmup_epochs"] == warmup]
            summary[f"{strategy} warmup={warmup}"] = {
                "val_accuracy_best_mean": statistics.fmean(r["val_accuracy_best"] for r in chosen),
                "val_accuracy_final_mean": statistics.fmean(r["val_accuracy_final"] for r in chosen)}
    OUT.write_text(json.dumps({"settings": {**SETTINGS, "data": "hymenoptera/train", "val": "20% of hymenoptera/train, "
                                            "stratified, data seed 0", "model": "efficientnet_lite0"},
                               "machine": {"cpus": torch.get_num_threads(), "processor": platform.processor(),
                                           "torch": torch.__version__},
                               "summary": summary, "runs": rows}, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
