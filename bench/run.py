"""headstart against the tutorial's loop, side by side: `make bench` (or `python bench/run.py CASE ...`).

Every run is a separate process, started from data on disk and ending with a trained model, timed from the
outside (wall clock) with its peak resident memory (`ru_maxrss` from wait4). Within a case the methods
alternate — reference, headstart, reference, headstart ... — so that a busy neighbour slows both alike; the
figures are medians over the repeats. headstart runs with a fresh, empty `--cache-dir` (cold cache: it decodes
every image and computes every feature), unless a run is named `*-warm` (the same cache again).

While each run goes, the CPU time that *other* processes used is measured from /proc/stat; a run is "quiet"
when the rest of the machine used less than 10% of its cores. Results: bench/results/<case>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
HYM = "../shared/data/hymenoptera"
CIFAR = "../shared/data/cifar10-cat-dog-horse"
# Epochs of the reference loop, overridable where the machine is too slow for them (say so with the results):
# linear: the 25; partial: headstart's default 10 on both sides (images/s is a rate, accuracy is compared
# at equal epochs); CIFAR: 5, as one reference epoch pushes 4,500 images (1,500 train + 3,000 val) through.
# table.py reports a reference run shorter than 25 epochs also as "measured job overhead + 25 x measured median
# epoch": the tutorial's epochs all cost the same, since nothing is cached.
PARTIAL_EPOCHS = os.environ.get("BENCH_PARTIAL_EPOCHS", "10")
CIFAR_EPOCHS = os.environ.get("BENCH_CIFAR_EPOCHS", "5")
CIFAR_SIZE = 64  # headstart suggests 128 px for 32x32 sources; 64 costs a quarter of that again
LINEAR_REF_EPOCHS = os.environ.get("BENCH_LINEAR_REF_EPOCHS", "25")


def headstart(data: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "headstart.cli", "train", data, *args]


def tutorial(data: str, *args: str) -> list[str]:
    return [sys.executable, str(BENCH / "tutorial.py"), data, *args]


def forward_once(data: str, *args: str) -> list[str]:
    return [sys.executable, str(BENCH / "forward_once.py"), data, *args]


# case -> (runs: name -> command template, repeats). "{cache}" / "{out}" / "{json}" are filled per run.
CASES = {
    "hymenoptera-linear": ({
        "headstart": headstart(HYM, "--strategy", "linear", "--image-size", "224", "--cache-dir", "{cache}", "--out", "{out}"),
        "headstart-warm": headstart(HYM, "--strategy", "linear", "--image-size", "224", "--cache-dir", "{cache}", "--out", "{out}"),
        "forward-once": forward_once(HYM, "--image-size", "224", "--json", "{json}"),
        "tutorial": tutorial(HYM, "--mode", "linear", "--epochs", LINEAR_REF_EPOCHS, "--image-size", "224", "--json", "{json}"),
    }, 3),
    "hymenoptera-partial": ({
        "headstart": headstart(HYM, "--strategy", "partial", "--epochs", PARTIAL_EPOCHS, "--patience", "0",
                               "--image-size", "224", "--cache-dir", "{cache}", "--out", "{out}"),
        "headstart-cached": headstart(HYM, "--strategy", "partial", "--augment", "none", "--epochs", PARTIAL_EPOCHS,
                                      "--patience", "0", "--image-size", "224", "--cache-dir", "{cache}", "--out", "{out}"),
        "tutorial": tutorial(HYM, "--mode", "partial", "--epochs", PARTIAL_EPOCHS, "--image-size", "224", "--json", "{json}"),
    }, 3),
    "cifar-linear": ({
        "tutorial": tutorial(CIFAR, "--mode", "linear", "--epochs", CIFAR_EPOCHS, "--per-class", "500", "--image-size", str(CIFAR_SIZE),
                             "--json", "{json}"),
        "headstart": headstart(CIFAR, "--strategy", "linear", "--per-class", "500", "--image-size", str(CIFAR_SIZE),
                               "--cache-dir", "{cache}", "--out", "{out}"),
    }, 2),
    "cifar-partial": ({
        "tutorial": tutorial(CIFAR, "--mode", "partial", "--epochs", CIFAR_EPOCHS, "--per-class", "500", "--image-size", str(CIFAR_SIZE),
                             "--json", "{json}"),
        "headstart": headstart(CIFAR, "--strategy", "partial", "--epochs", CIFAR_EPOCHS, "--patience", "0", "--per-class", "500",
                               "--image-size", str(CIFAR_SIZE), "--cache-dir", "{cache}", "--out", "{out}"),
        "headstart-cached": headstart(CIFAR, "--strategy", "partial", "--augment", "none", "--epochs", CIFAR_EPOCHS,
                                      "--patience", "0", "--per-class", "500", "--image-size", str(CIFAR_SIZE), "--cache-dir", "{cache}",
                                      "--out", "{out}"),
    }, 2),
}


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import torchvision

    return {"cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "cpu": cpu, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def busy_seconds() -> float:
    """CPU seconds all processes have used since boot (user+nice+system+irq+softirq+steal)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:3]) + sum(fields[5:8])) / os.sysconf("SC_CLK_TCK")


def timed(cmd: list[str], log: Path) -> dict:
    """Run `cmd`; its wall time, peak RSS, CPU time and the CPU the rest of the machine used meanwhile."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCH.parent / "src"), str(BENCH), os.environ.get("PYTHONPATH", "")])}
    busy0, t0 = busy_seconds(), time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=BENCH.parent)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    own = usage.ru_utime + usage.ru_stime
    others = max(0.0, busy_seconds() - busy0 - own)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed; see {log}")
    return {"wall_seconds": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "cpu_seconds": own,
            "others_cpu_share": others / (wall * (os.cpu_count() or 1))}


def run_case(name: str, repeats: int, only: list[str] | None, append: bool = False) -> dict:
    """Alternate the case's runs `repeats` times; bench/results/<name>.json is rewritten after every run, so an
    interrupted benchmark keeps what it measured. `append` keeps the runs already there whose command is the same."""
    runs, reps = CASES[name]
    repeats = repeats or reps
    records: dict[str, list[dict]] = {r: [] for r in runs if not only or r in only}
    path = RESULTS / f"{name}.json"
    kept: dict[str, list[dict]] = {}
    if append and path.is_file():
        old = json.loads(path.read_text())
        kept = {r: recs for r, recs in old["runs"].items() if r in runs and old["commands"][r] == " ".join(runs[r][1:])}
    work = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    try:
        for rep in range(repeats):
            for run in records:
                cache = work / f"cache-{rep}" / run.removesuffix("-warm")
                if not run.endswith("-warm"):
                    shutil.rmtree(cache, ignore_errors=True)  # cold: a fresh, empty cache folder
                out, js = work / f"{run}-{rep}", work / f"{run}-{rep}.json"
                cmd = [a.format(cache=cache, out=out, json=js) for a in runs[run]]
                print(f"[{name}] {run} #{rep + 1}: {' '.join(cmd[1:])}", flush=True)
                rec = timed(cmd, RESULTS / f"{name}-{run}-{rep}.log")
                rec.update(_outcome(out, js))
                print(f"    {json.dumps(rec)}", flush=True)
                records[run].append(rec)
                write_result(path, summarize(name, runs, _merge(kept, records), repeats))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return summarize(name, runs, _merge(kept, records), repeats)


def _merge(kept: dict[str, list[dict]], new: dict[str, list[dict]]) -> dict[str, list[dict]]:
    return {r: kept.get(r, []) + new.get(r, []) for r in {**kept, **new}}


def summarize(name: str, runs: dict, records: dict[str, list[dict]], repeats: int) -> dict:
    done = {r: recs for r, recs in records.items() if recs}
    result = {"case": name, "machine": machine(), "repeats_planned": repeats,
              "repeats_done": {r: len(recs) for r, recs in done.items()},
              "commands": {r: " ".join(runs[r][1:]) for r in done}, "runs": done,
              "median": {r: _medians(recs) for r, recs in done.items()}}
    shares = [rec["others_cpu_share"] for recs in done.values() for rec in recs]
    result["quiet"] = max(shares) < 0.10
    result["others_cpu_share_max"] = max(shares)
    result["ratios"] = _ratios(result["median"])
    return result


def write_result(path: Path, result: dict) -> None:
    result["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    path.write_text(json.dumps(result, indent=2) + "\n")


def _outcome(out: Path, js: Path) -> dict:
    """What the run reports about itself: accuracy, epochs, training-loop time and images/s."""
    if (out / "run.json").is_file():  # headstart
        run = json.loads((out / "run.json").read_text())
        return {"best_val_accuracy": run["best_val_accuracy"], "epochs": run["epochs"], "n_train": run["n_train"],
                "n_val": run["n_val"], "loop_seconds": run["train_seconds"],
                "train_images_per_second": run["n_train"] * run["epochs"] / run["train_seconds"]}
    data = json.loads(js.read_text())
    return {k: v for k, v in data.items() if k != "history" and not isinstance(v, (list, dict))}


def _medians(recs: list[dict]) -> dict:
    keys = [k for k, v in recs[0].items() if isinstance(v, (int, float))]
    return {k: statistics.median(r[k] for r in recs) for k in keys}


def _ratios(m: dict) -> dict:
    out = {}
    ref = m.get("tutorial")
    for run, med in m.items():
        if run == "tutorial" or not ref:
            continue
        out[f"{run}_wall_vs_tutorial"] = med["wall_seconds"] / ref["wall_seconds"]
        if "train_images_per_second" in med:
            out[f"{run}_images_per_second_vs_tutorial"] = med["train_images_per_second"] / ref["train_images_per_second"]
        if "best_val_accuracy" in med:
            out[f"{run}_accuracy_minus_tutorial"] = med["best_val_accuracy"] - ref["best_val_accuracy"]
    if "forward-once" in m and "headstart" in m:
        out["headstart_wall_vs_forward_once_job"] = m["headstart"]["wall_seconds"] / m["forward-once"]["wall_seconds"]
        out["headstart_wall_vs_forward_once_loop"] = m["headstart"]["wall_seconds"] / m["forward-once"]["loop_seconds"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", default=[*CASES, "pipeline"], help=f"{', '.join(CASES)}, pipeline")
    parser.add_argument("--repeats", type=int, default=0, help="0: each case's default")
    parser.add_argument("--only", default=None, help="comma-separated runs of a case (e.g. tutorial,headstart)")
    parser.add_argument("--append", action="store_true", help="add to the runs in bench/results/<case>.json")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in args.cases:
        if name == "pipeline":
            js = RESULTS / "pipeline.json"
            rec = timed([sys.executable, str(BENCH / "pipeline.py"), HYM, "--json", str(js)], RESULTS / "pipeline.log")
            result = {**json.loads(js.read_text()), "machine": machine(), "quiet": rec["others_cpu_share"] < 0.10,
                      "others_cpu_share_max": rec["others_cpu_share"], "command": f"bench/pipeline.py {HYM}"}
        else:
            result = run_case(name, args.repeats, args.only.split(",") if args.only else None, args.append)
            js = RESULTS / f"{name}.json"
        write_result(js, result)
        print(f"wrote {js}: {json.dumps(result.get('ratios', result.get('ratio')))}", flush=True)


if __name__ == "__main__":
    main()
