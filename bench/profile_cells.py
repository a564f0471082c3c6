"""Where a training run's time goes, part by part: the slow cells of a comparison (scratch, full, lp-ft) at 224 px.

Each run is `pipeline.train`, unchanged; this script wraps timers around the functions the loop calls (the loop
itself carries no instrumentation) and adds up, per part, wall seconds and CPU seconds of this process:

    data          waiting for the next training batch (augmentation runs in a loader worker; its CPU is not ours)
    forward       the training step's forward pass (frozen prefix included)
    backward      fabric.backward
    optimizer     AdamW.step
    validation    predict_batches on val (every epoch), its batches included
    monitor_build the forgetting monitor's set-up: a pretrained reference copy, its features on the probe images
    monitor       the forgetting monitor's call after every epoch (drift, CKA, the old task's top-1)
    phase         entering a phase: freezing, cached prefix activations, loaders
    records       checkpoints, resume points, history.csv
    finish        the best weights on test, run.json, plots, report.html
    other         everything else of the run (data loading and decoding, the model, scheduler, progress bars)

Wall time on a shared machine measures the load as much as the work; CPU seconds of this process measure the
work (both are kept).

    python bench/profile_cells.py --strategies scratch,full,lp-ft --per-class 40 --json bench/results/profile.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch
from lightning_fabric import Fabric
from torch.utils.data import DataLoader
from torch.utils.data.dataloader import _BaseDataLoaderIter

import headstart.pipeline as pipeline
from headstart.analysis.drift import ForgettingMonitor
import headstart.train as train_module
from headstart.train import TrainConfig

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera"
LP_FT_EPOCHS = 4  # lp-ft's fine-tuning phase starts at epoch 4: fewer epochs would profile a linear probe only


class Clock:
    """Wall and CPU seconds per part; a part entered inside another is not counted twice (the outer one pauses)."""

    def __init__(self):
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.stack: list[str] = []

    @contextmanager
    def part(self, name: str):
        if self.stack and self.stack[-1] == name:  # re-entered (a wrapped function calling a wrapped one)
            yield
            return
        w, c = time.perf_counter(), time.process_time()
        outer = self.stack[-1] if self.stack else None
        self.stack.append(name)
        try:
            yield
        finally:
            self.stack.pop()
            dw, dc = time.perf_counter() - w, time.process_time() - c
            self.wall[name] += dw
            self.cpu[name] += dc
            self.calls[name] += 1
            if outer is not None:  # the outer part did not spend this time itself
                self.wall[outer] -= dw
                self.cpu[outer] -= dc


def timed(clock: Clock, name, fn):
    """`fn` with its calls counted under `name` (or name(*args) -> the part's name)."""
    def wrapper(*args, **kwargs):
        with clock.part(name(*args, **kwargs) if callable(name) else name):
            return fn(*args, **kwargs)
    wrapper.__wrapped__ = fn
    return wrapper


def instrument(clock: Clock) -> list[tuple[object, str, object]]:
    """Wrap the loop's functions with timers; returns what to put back."""
    def forward_part(*args, **kwargs):  # without gradients: a prediction, counted in the part that asked for it
        return "forward" if torch.is_grad_enabled() else clock.stack[-1]

    def batch_part(*args, **kwargs):  # batches of the training loop; inside another part, that part's
        return "data" if clock.stack[-1:] == ["other"] else clock.stack[-1]

    def prediction_part(*args, **kwargs):  # the test split's prediction belongs to finishing the run
        return "finish" if clock.stack[-1:] == ["finish"] else "validation"

    targets = [
        (train_module, "forward_batch", forward_part),
        (train_module, "predict_batches", prediction_part),
        (train_module, "enter_phase", "phase"),
        (Fabric, "backward", "backward"),
        (torch.optim.AdamW, "step", "optimizer"),
        (_BaseDataLoaderIter, "__next__", batch_part),
        (DataLoader, "__iter__", batch_part),  # starts the loader's workers
        (pipeline, "forgetting_monitor", "monitor_build"),
        (ForgettingMonitor, "__call__", "monitor"),
        (pipeline, "save_checkpoint", "records"),
        (pipeline, "save_resume_point", "records"),
        (pipeline, "write_history", "records"),
        (pipeline, "finish_run", "finish"),
    ]
    saved = []
    for owner, attr, name in targets:
        original = getattr(owner, attr)
        saved.append((owner, attr, original))
        setattr(owner, attr, timed(clock, name, original))
    return saved


def profile_run(strategy: str, epochs: int, per_class: int, val_per_class: int, image_size: int, out: Path,
                cache_dir: str, precision: str) -> dict:
    clock = Clock()
    saved = instrument(clock)
    cfg = TrainConfig(strategy=strategy, epochs=epochs, image_size=image_size, patience=None, cache_dir=cache_dir,
                      precision=precision)
    try:
        with clock.part("other"):
            run = pipeline.train(str(DATA), cfg, out / strategy, per_class=per_class, val_per_class=val_per_class,
                                 val_as_test=True)
    finally:
        for owner, attr, original in saved:
            setattr(owner, attr, original)
    total_wall = sum(clock.wall.values())
    total_cpu = sum(clock.cpu.values())
    return {"strategy": strategy, "epochs": epochs, "n_train": run["n_train"], "n_val": run["n_val"],
            "n_test": run["n_test"], "precision": run["precision"], "monitor_seconds": run["monitor_seconds"],
            "train_seconds": run["train_seconds"], "total_wall_seconds": total_wall, "total_cpu_seconds": total_cpu,
            "wall_seconds": dict(sorted(clock.wall.items(), key=lambda kv: -kv[1])),
            "cpu_seconds": dict(sorted(clock.cpu.items(), key=lambda kv: -kv[1])), "calls": dict(clock.calls),
            "wall_share": {k: v / total_wall for k, v in sorted(clock.wall.items(), key=lambda kv: -kv[1])}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", default="scratch,full,lp-ft")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--val-per-class", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--label", default=None, help="Key of this measurement in the JSON file (default: precision).")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = json.loads(args.json.read_text()) if args.json and args.json.is_file() else {}
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in args.strategies.split(","):
            epochs = max(args.epochs, LP_FT_EPOCHS) if strategy == "lp-ft" else args.epochs
            runs[strategy] = profile_run(strategy, epochs, args.per_class, args.val_per_class, args.image_size,
                                         Path(tmp) / "runs", str(Path(tmp) / "cache"), args.precision)
            print(json.dumps(runs[strategy], indent=2))
    result[args.label or args.precision] = {
        "data": "hymenoptera (val/ as test)", "per_class": args.per_class, "val_per_class": args.val_per_class,
        "image_size": args.image_size, "torch_threads": torch.get_num_threads(), "runs": runs}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
