"""Exported models against the PyTorch model they came from: accuracy, agreement, size and speed.

Trains (or reuses) a `linear` run of EfficientNet-Lite0 on hymenoptera at 224 px, exports it to ONNX and to a
torch.export program, then runs all three on the whole val set, preprocessed from the sidecar alone, and times
inference: batch 1 (one request at a time, the serving case) and batch 16, on this machine's cores.

    PYTHONPATH=src:bench .venv/bin/python bench/export.py    # -> bench/results/export.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from headstart.api import export, train
from headstart.data import load_class_folders
from headstart.train import TrainConfig

BENCH = Path(__file__).resolve().parent
HYM = Path("../shared/data/hymenoptera")


def timed(fn, batch: np.ndarray, size: int, repeats: int = 3) -> float:
    """Median seconds per image over `repeats` passes of the whole batch in chunks of `size` (after a warm-up)."""
    fn(batch[:size])
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(0, len(batch), size):
            fn(batch[i:i + size])
        times.append((time.perf_counter() - t0) / len(batch))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/bench-export"))
    parser.add_argument("--json", type=Path, default=BENCH / "results" / "export.json")
    args = parser.parse_args()
    run_dir = args.work / "linear"
    if not (run_dir / "run.json").is_file():
        train(HYM, TrainConfig(strategy="linear", image_size=224, seed=0), run_dir)
    run = json.loads((run_dir / "run.json").read_text())

    images, _ = load_class_folders(HYM / "val")
    files = [Path(r) for r in images.refs]
    from headstart.images import UnreadableImage, read_rgb

    readable = []
    for f, y in zip(files, images.labels):
        try:
            read_rgb(f)
            readable.append((f, y))
        except UnreadableImage:
            pass
    files, labels = [f for f, _ in readable], np.array([y for _, y in readable])

    import onnxruntime as ort

    from headstart.export import Deployable, preprocess_as_sidecar_says
    from headstart.runs import load_run

    model, config = load_run(run_dir)
    reference = Deployable(model).eval()
    results: dict = {"run": {"model": run["model"], "strategy": run["strategy"], "image_size": run["image_size"],
                             "best_val_accuracy": run["best_val_accuracy"]}, "n_val": len(files), "formats": {}}
    labels = np.array([config["classes"].index(images.classes[y]) for y in labels])  # the run's class order
    predictors = {"pytorch": lambda x: reference(torch.from_numpy(x))[0].numpy()}
    for fmt in ("onnx", "pt2"):
        out = args.work / f"model.{fmt}"
        t0 = time.perf_counter()
        sidecar = export(run_dir, out, images=[str(HYM / "val")])
        results["formats"][fmt] = {"export_seconds": time.perf_counter() - t0, "megabytes": out.stat().st_size / 2**20,
                                   "check": sidecar["check"]}
        if fmt == "onnx":
            session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
            predictors["onnx"] = lambda x, s=session: s.run(["logits"], {"images": x})[0]
        else:
            program = torch.export.load(str(out)).module()
            predictors["pt2"] = lambda x, p=program: p(torch.from_numpy(x))[0].detach().numpy()
    batch = preprocess_as_sidecar_says(files, sidecar["sidecar"])  # the shipped code, as the sidecar says
    with torch.inference_mode():
        logits = {name: fn(batch) for name, fn in predictors.items()}
        for name, fn in predictors.items():
            entry = results["formats"].setdefault(name, {})
            entry["val_accuracy"] = float((logits[name].argmax(1) == labels).mean())
            entry["max_logit_difference_vs_pytorch"] = float(np.abs(logits[name] - logits["pytorch"]).max())
            entry["ms_per_image_batch1"] = 1000 * timed(fn, batch, 1)
            entry["ms_per_image_batch16"] = 1000 * timed(fn, batch, 16)
    results["machine"] = {"cores": torch.get_num_threads(), "torch": torch.__version__, "onnxruntime": ort.__version__}
    results["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
