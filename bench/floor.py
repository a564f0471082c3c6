"""How fast could a finished comparison have been on this machine? A lower bound from its own runs.

A comparison's time is mostly the network's arithmetic: training steps through the whole backbone and forward
passes without gradients. This measures the two rates on this machine (Lite0, channels_last, in training steps of
32 images that go through in parts of 8 — what headstart does at 224 px — and inference batches of 16), in fp32
and, where the CPU has it, bf16 autocast. Then it counts, from every run of a finished comparison (history.csv,
run.json), only the work no schedule can avoid:

    whole-network training   every epoch in which every backbone group trained (scratch, full, the later phases
                             of lp-ft and gradual): training images x the training step's cost
    forward passes           validation after those epochs, the test images once per run, and the forgetting
                             monitor's measured calls (its set-up included)

and prices it at the measured rates. Everything else counts as free: epochs that train only a tail on cached
features, computing those features, data loading, model loads, reports. So the figure is a floor: no way of
scheduling the same experiment (same strategies, epochs, images, monitor, number format) runs faster here.

    PYTHONPATH=src:bench python bench/floor.py runs/cifar500/default runs/hymenoptera-cv/default
        ->  bench/results/floor.json

Comparisons already in floor.json that are not named again are kept, each with the rates and date it was priced
at: a comparison's runs need not stay on disk for its floor to stay on record.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import timm
import torch

from run import machine

OUT = Path(__file__).resolve().parent / "results" / "floor.json"
BATCH, PART, INFERENCE_BATCH, STEPS = 32, 8, 16, 3


def rates(image_size: int, precision: str) -> dict:
    """Images per second (wall, this process's threads) of a training step and of inference, at `precision`."""
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", num_classes=3).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    x = torch.randn(BATCH, 3, image_size, image_size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 3, (BATCH,))
    bf16 = precision == "bf16"

    def step() -> None:
        optimizer.zero_grad()
        for i in range(0, BATCH, PART):  # parts of 8, gradients adding up to the batch's step
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                logits = model(x[i:i + PART])
            (torch.nn.functional.cross_entropy(logits.float(), y[i:i + PART], reduction="sum") / BATCH).backward()
        optimizer.step()

    def infer() -> None:
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            model(x[:INFERENCE_BATCH])

    model.train()
    train_rate = BATCH / fastest(step)
    model.eval()
    return {"train_images_per_second": round(train_rate, 2),
            "inference_images_per_second": round(INFERENCE_BATCH / fastest(infer), 2)}


def fastest(work) -> float:
    """The fastest of STEPS timed calls after a warm-up (the least disturbed by the rest of the machine)."""
    work()
    times = []
    for _ in range(STEPS):
        t = time.perf_counter()
        work()
        times.append(time.perf_counter() - t)
    return min(times)


def unavoidable_work(run_dir: Path) -> dict:
    """Whole-network training images and forward passes of one finished run (see the module's docstring)."""
    run = json.loads((run_dir / "run.json").read_text())
    with open(run_dir / "history.csv", newline="") as f:
        history = list(csv.DictReader(f))
    groups = [k[3:] for k in history[0] if k.startswith("lr_") and k != "lr_head"]
    whole = [row for row in history if set(groups) <= set(row["trainable"].split("+"))]
    forgetting = run.get("forgetting") or {}
    monitor_calls = len(forgetting.get("monitored_epochs") or []) + (1 if forgetting else 0)  # + its set-up
    return {"strategy": run["strategy"], "train_seconds": run["train_seconds"],
            "whole_network_training_images": len(whole) * run["n_train"],
            "forward_passes": len(whole) * run["n_val"] + run["n_test"]
            + monitor_calls * (forgetting.get("images_per_call") or 0)}


def floor_of(folder: Path, measured: dict) -> dict:
    """One finished comparison's floor at the measured rates, beside the training seconds its runs recorded."""
    summary = json.loads((folder / "summary.json").read_text())
    runs = [unavoidable_work(d) for d in sorted((folder / "runs").iterdir()) if (d / "run.json").is_file()]
    floors = {}
    for precision, r in measured.items():
        per_strategy: dict[str, float] = {}
        for run in runs:
            seconds = (run["whole_network_training_images"] / r["train_images_per_second"]
                       + run["forward_passes"] / r["inference_images_per_second"])
            per_strategy[run["strategy"]] = per_strategy.get(run["strategy"], 0.0) + seconds
        floors[precision] = {"total_minutes": round(sum(per_strategy.values()) / 60, 2),
                             "per_strategy_seconds": {k: round(v, 1) for k, v in per_strategy.items()}}
    trained: dict[str, float] = {}
    for run in runs:
        trained[run["strategy"]] = round(trained.get(run["strategy"], 0.0) + run["train_seconds"], 1)
    return {"command": summary["setup"].get("command"), "image_size": summary["setup"]["image_size"],
            "runs": len(runs), "floor": floors, "train_seconds_measured": trained,
            "train_minutes_measured": round(sum(trained.values()) / 60, 2),
            "work": {k: sum(r[k] for r in runs) for k in ("whole_network_training_images", "forward_passes")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("comparisons", type=Path, nargs="+", help="finished comparisons (folders with summary.json)")
    ap.add_argument("--image-size", type=int, default=224, help="the size their runs trained at (the rates' size)")
    args = ap.parse_args()
    measured = {"fp32": rates(args.image_size, "fp32")}
    capabilities = torch.cpu.get_capabilities()
    if capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"):
        measured["bf16"] = rates(args.image_size, "bf16")
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    priced = {str(folder): {"priced": {"date": date, "image_size": args.image_size, "rates": measured},
                            **floor_of(folder, measured)} for folder in args.comparisons}
    for folder, result in priced.items():
        if result["image_size"] != args.image_size:
            raise SystemExit(f"{folder} trained at {result['image_size']} px, the rates are at {args.image_size}")
    earlier = json.loads(OUT.read_text()) if OUT.is_file() else {}
    comparisons = {**earlier.get("comparisons", {}), **priced}
    record = {"machine": machine(), "date": date, "image_size": args.image_size, "measured_rates": measured,
              "comparisons": comparisons}
    OUT.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({"rates": measured, **{k: {"floor": v["floor"], "measured_minutes": v["train_minutes_measured"]}
                                            for k, v in priced.items()}}, indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
