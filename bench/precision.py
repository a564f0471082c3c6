"""fp32 against bf16 autocast on this machine: speed of the network's arithmetic, and accuracy parity of whole runs.

- speed: efficientnet_lite0 at 224 px, batch 32, channels_last. A forward pass in inference mode (what the frozen
  prefix, validation and predict do), and a training step of the whole network (forward under autocast, fp32 loss,
  backward, AdamW). On one thread, timed in CPU seconds of this process (time.process_time) as well as wall seconds:
  the machine's two cores are shared with other jobs, so wall time measures the load as much as the arithmetic,
  while CPU time measures the work. The two precisions alternate, repetition by repetition; the figure is the
  median repetition.
- agreement: the pretrained model's own ImageNet head on ImageNet validation images (`evaluate_imagenet`), fp32
  against bf16: top-1 of each and the share of images whose top-1 class is the same (inference only; cheap).
- parity: the same runs (`pipeline.train`, one seed) with --precision fp32 and --precision bf16, test figures on images
  nothing was selected on: hymenoptera at 224 px (its val/ as test) and cifar cat/dog/horse 500/class at 96 px
  (val/ as test, val capped at 100/class). Parity holds when every cell's test accuracy is within 0.5 points and each
  dataset has the same winner in both precisions.

    python bench/precision.py speed agreement parity --json bench/results/precision.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from headstart.backbones import load_backbone
from headstart.pipeline import train
from headstart.precision import autocast, cpu_bf16_feature
from headstart.train import TrainConfig

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PARITY_CASES = {  # dataset -> (data arguments, config fields), strategies
    "hymenoptera": (dict(data=DATA / "hymenoptera", val_as_test=True), dict(image_size=224, epochs=4),
                    ("linear", "partial")),
    "cifar-500": (dict(data=DATA / "cifar10-cat-dog-horse", per_class=500, val_as_test=True, val_per_class=100),
                  dict(image_size=96, epochs=4), ("linear", "partial")),
}
PARITY_POINTS = 0.5  # test accuracy points within which bf16 counts as the same


def images_per_second(step, batch: int, repeats: int) -> dict[str, dict[str, float]]:
    """Median images per CPU second and per wall second of `step(precision)` for fp32 and bf16, alternating the two,
    after one warm-up each."""
    cpu: dict[str, list[float]] = {"fp32": [], "bf16": []}
    wall: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for precision in cpu:
        step(precision)
    for _ in range(repeats):
        for precision in cpu:
            c, w = time.process_time(), time.perf_counter()
            step(precision)
            cpu[precision].append(time.process_time() - c)
            wall[precision].append(time.perf_counter() - w)
    return {"per_cpu_second": {p: batch / statistics.median(ts) for p, ts in cpu.items()},
            "per_wall_second": {p: batch / statistics.median(ts) for p, ts in wall.items()}}


def speed(batch: int, size: int, repeats: int) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # CPU seconds of one thread are the work; several threads would add their spinning
    try:
        return _speed(batch, size, repeats)
    finally:
        torch.set_num_threads(threads)


def _speed(batch: int, size: int, repeats: int) -> dict:
    model = load_backbone("efficientnet_lite0").to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,))

    def forward(precision: str) -> None:
        model.eval()
        with torch.inference_mode(), autocast(precision, "cpu"):
            model(x)

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def train_step(precision: str) -> None:
        model.train()
        with autocast(precision, "cpu"):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)  # the loss and the optimizer stay fp32, as in train.py
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    fwd = images_per_second(forward, batch, repeats)
    step = images_per_second(train_step, batch, repeats)
    return {"model": "efficientnet_lite0", "image_size": size, "batch_size": batch, "channels_last": True,
            "threads": 1, "repeats": repeats, "forward_images_per_second": fwd, "train_step_images_per_second": step,
            "forward_speedup": speedups(fwd), "train_step_speedup": speedups(step)}


def speedups(rates: dict[str, dict[str, float]]) -> dict[str, float]:
    return {clock: r["bf16"] / r["fp32"] for clock, r in rates.items()}


def agreement(images: int, cache_dir: str) -> dict:
    from headstart.data import imagenet_images
    from headstart.evaluate import evaluate_model

    model = load_backbone("efficientnet_lite0")
    data = imagenet_images(DATA / "imagenet-samples" / "val")
    data = data.subset(list(range(0, len(data), max(1, len(data) // images)))[:images])
    logits = {p: evaluate_model(model, data, cache_dir=cache_dir, device="cpu", precision=p)[:2] for p in ("fp32", "bf16")}
    labels = logits["fp32"][1]
    top1 = {p: float((lg.argmax(1) == labels).float().mean()) for p, (lg, _) in logits.items()}
    same = float((logits["fp32"][0].argmax(1) == logits["bf16"][0].argmax(1)).float().mean())
    return {"model": "efficientnet_lite0", "images": len(labels), "image_size": model.preprocessing.image_size,
            "top1": top1, "top1_agreement": same,
            "max_abs_logit_difference": float((logits["fp32"][0] - logits["bf16"][0]).abs().max())}


def parity(cache_dir: str, runs_dir: Path) -> dict:
    cases = {}
    for name, (data_args, fields, strategies) in PARITY_CASES.items():
        cells = {}
        for strategy in strategies:
            for precision in ("fp32", "bf16"):
                cfg = TrainConfig(strategy=strategy, precision=precision, cache_dir=cache_dir, patience=None,
                                  monitor_folder="none", **fields)
                run = train(str(data_args["data"]), cfg, runs_dir / name / f"{strategy}-{precision}",
                            **{k: v for k, v in data_args.items() if k != "data"})
                cells.setdefault(strategy, {})[precision] = {
                    "test_accuracy": run["test_accuracy"], "test_interval": run["test_interval"],
                    "val_accuracy_best": run["val_accuracy_best"], "train_seconds": run["train_seconds"],
                    "n_test": run["n_test"], "precision": run["precision"]}
        winner = {p: max(strategies, key=lambda s: cells[s][p]["test_accuracy"]) for p in ("fp32", "bf16")}
        gaps = {s: 100 * (cells[s]["bf16"]["test_accuracy"] - cells[s]["fp32"]["test_accuracy"]) for s in strategies}
        cases[name] = {"settings": {**{k: str(v) for k, v in data_args.items()}, **fields, "seed": 0},
                       "cells": cells, "bf16_minus_fp32_points": gaps, "winner": winner,
                       "holds": winner["fp32"] == winner["bf16"] and all(abs(g) <= PARITY_POINTS for g in gaps.values())}
    return {"criterion": f"|bf16 - fp32| test accuracy <= {PARITY_POINTS} points in every cell and the same winner",
            "cases": cases, "holds": all(c["holds"] for c in cases.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="+", choices=["speed", "agreement", "parity"])
    parser.add_argument("--agreement-images", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if cpu_bf16_feature() is None:
        raise SystemExit("this CPU has no native bf16 (AMX or AVX512-BF16): nothing to compare")
    result = json.loads(args.json.read_text()) if args.json and args.json.is_file() else {}
    result["machine"] = {"cpu": platform.processor() or platform.machine(), "cores": torch.get_num_threads(),
                         "bf16": cpu_bf16_feature(),
                         "capabilities": {k: v for k, v in torch.cpu.get_capabilities().items() if "bf16" in k or "amx" in k},
                         "torch": torch.__version__}
    t0 = time.perf_counter()
    if "speed" in args.parts:
        result["speed"] = speed(args.batch_size, args.image_size, args.repeats)
        print(json.dumps(result["speed"], indent=2))
    if "agreement" in args.parts:
        with tempfile.TemporaryDirectory() as tmp:
            result["agreement"] = agreement(args.agreement_images, str(Path(tmp) / "cache"))
        print(json.dumps(result["agreement"], indent=2))
    if "parity" in args.parts:
        with tempfile.TemporaryDirectory() as tmp:
            result["parity"] = parity(str(Path(tmp) / "cache"), Path(tmp) / "runs")
        print(json.dumps(result["parity"], indent=2))
    result.setdefault("seconds", {}).update({"+".join(args.parts): time.perf_counter() - t0})
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
