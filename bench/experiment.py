"""A whole comparison, timed end to end: wall time, peak memory and the answer, for each way of running it.

A user runs experiments, not single runs, so this is the figure that matters for waiting: `headstart compare`
from data on disk (fresh, empty cache) to summary.json. Each variant is one process, timed from the outside
like bench/run.py does; the variants of a case run the same experiment, so their answers must agree:

    default     the command with every setting at its default (what a user gets; the README's figures)
    serial      the cells one after another in the compare process, fp32
    ray         every cell a Ray task on a local Ray instance, one cell at a time with as many CPUs as the
                serial run has torch threads (so the arithmetic, thread split included, is the same)
    bf16        serial, with --precision bf16 (forward passes in bf16 autocast where the CPU has it)
    ghost-bn    serial, scratch's BatchNorm over parts of 8 (the default at 224 px since 2026-12-01)
    whole-bn    serial, scratch's batch of 32 whole (the default before; `serial` meant this until then)

For each variant: wall seconds, the compare process's peak RSS (Ray's workers are not its children and are
not included), every cell's test accuracy, each strategy's mean with its interval, and the verdict. Against
the first variant: whether every cell's test accuracy is identical, the largest difference, and whether the
verdict (winner, tied set, recommendation) is the same.

    python bench/experiment.py hymenoptera --variants serial,ray
    python bench/experiment.py cifar500 --variants serial,bf16

Results: bench/results/experiment-<case>.json (rewritten after every variant, so a stopped benchmark keeps
what it measured; `--append` keeps the variants already there whose command is unchanged).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from run import machine, timed

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
DATA = "../shared/data"
ALL6 = "scratch,linear,partial,full,gradual,lp-ft"

# case -> the compare arguments after `compare`; the out folder and cache are added per variant.
CASES = {
    # The 6 strategies x 3 seeds; hymenoptera ships no test split, so its val/ is the test set and val
    # is drawn from train (--val-as-test).
    "hymenoptera": [f"{DATA}/hymenoptera", "--val-as-test", "--strategies", ALL6, "--seeds", "0,1,2",
                    "--epochs", "5", "--image-size", "224"],
    # The README's committed command (5-fold cross-validation, one seed).
    "hymenoptera-cv": [f"{DATA}/hymenoptera", "--folds", "5", "--seeds", "0", "--strategies", ALL6,
                       "--epochs", "5"],
    # The README's lesson-scale comparison (500 per class; test = the official 1,000 per class).
    "cifar500": [f"{DATA}/cifar10-cat-dog-horse", "--per-class", "500", "--val-as-test", "--val-per-class", "300",
                 "--strategies", "scratch,linear,partial,lp-ft", "--seeds", "0,1,2", "--epochs", "8",
                 "--image-size", "224"],
}
VARIANTS = {
    "default": [],  # the command as the README gives it: every setting at its default
    "serial": ["--precision", "fp32"],
    "ray": ["--precision", "fp32", "--executor", "ray", "--max-parallel", "1", "--cpus-per-cell", "2"],
    "bf16": ["--precision", "bf16"],
    # scratch with ghost batch norm of 8 (chosen on val: bench/ghost_bn.py; the default at 224 px since 2026-12-01)
    "ghost-bn": ["--precision", "fp32", "--ghost-bn", "8"],
    # scratch on whole batches of 32 (the default at 224 px until 2026-12-01)
    "whole-bn": ["--precision", "fp32", "--ghost-bn", "0"],
}


def compare_command(case: str, variant: str, out: Path, cache: Path) -> list[str]:
    return [sys.executable, "-m", "headstart.cli", "compare", *CASES[case], *VARIANTS[variant],
            "--out", str(out), "--cache-dir", str(cache)]


def answer(summary: dict) -> dict:
    """What a comparison concluded: every cell's test accuracy, each strategy's mean and interval, the verdict."""
    cells = {Path(r["run_dir"]).name: r["test_accuracy"]
             for s in summary["strategies"].values() for r in s["runs"]}
    intervals = summary["verdict"]["intervals"]
    strategies = {name: {"test_mean": iv["estimate"], "low": iv["low"], "high": iv["high"]}
                  for name, iv in intervals.items()}
    verdict = {k: summary[k] for k in ("best", "winner", "tied", "recommended")}
    return {"cells": cells, "strategies": strategies, "verdict": verdict, "sentence": summary["sentence"],
            "cache": summary.get("cache"),  # entries computed and reused across the cells, with their seconds
            "train_seconds": {name: row["wall_seconds_mean"] for name, row in summary["strategies"].items()}}


def agreement(reference: dict, other: dict) -> dict:
    """Whether two runs of one experiment gave the same answer, cell by cell and verdict by verdict."""
    shared = sorted(set(reference["cells"]) & set(other["cells"]))
    diffs = [abs(reference["cells"][c] - other["cells"][c]) for c in shared]
    return {"cells_compared": len(shared),
            "cells_missing": sorted(set(reference["cells"]) ^ set(other["cells"])),
            "identical_cells": sum(d == 0 for d in diffs),
            "max_cell_difference": max(diffs, default=None),
            "same_verdict": reference["verdict"] == other["verdict"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("case", choices=sorted(CASES))
    ap.add_argument("--variants", default="serial,ray", help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--append", action="store_true", help="keep earlier variants whose command is unchanged")
    ap.add_argument("--keep", type=Path, help="keep each variant's compare folder under this folder")
    args = ap.parse_args()
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    path = RESULTS / f"experiment-{args.case}.json"
    record = {"case": args.case, "machine": machine(), "variants": {}, "agreement": {}}
    if args.append and path.is_file():
        old = json.loads(path.read_text())
        record["variants"] = {v: r for v, r in old["variants"].items()
                              if r["arguments"] == CASES[args.case] + VARIANTS.get(v, [None])}
    work = Path(tempfile.mkdtemp(prefix=f"bench-experiment-{args.case}-"))
    for variant in variants:
        out = (args.keep or work) / variant
        shutil.rmtree(out, ignore_errors=True)
        cache = work / f"cache-{variant}"  # cold: every variant decodes and computes everything itself
        started = time.strftime("%Y-%m-%dT%H:%M:%S")
        print(f"{args.case} / {variant}: {' '.join(compare_command(args.case, variant, out, cache)[2:])}",
              flush=True)
        measured = timed(compare_command(args.case, variant, out, cache), work / f"{variant}.log")
        summary = json.loads((out / "summary.json").read_text())
        record["variants"][variant] = {"arguments": CASES[args.case] + VARIANTS[variant], "started": started,
                                       **measured, **answer(summary)}
        print(f"  {measured['wall_seconds'] / 60:.1f} min, peak RSS {measured['peak_rss_mb']:.0f} MB; "
              f"{summary['sentence']}", flush=True)
        first = next(iter(record["variants"]))
        record["agreement"] = {v: agreement(record["variants"][first], r)
                               for v, r in record["variants"].items() if v != first}
        record["agreement_reference"] = first
        path.write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)  # kept when a variant fails: its log is there
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
