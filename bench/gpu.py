"""Is the input pipeline the bottleneck? Training images/s against the raw model on synthetic tensors.

- raw: the model's forward + backward (+ optimizer step) on a batch that already sits on the device;
- headstart: the same model, trainable groups and batch size, fed by headstart's pipeline — uint8 store
  (decoded once), augmentation in DataLoader workers, pinned memory, non-blocking copies, normalisation on the
  device, bf16 autocast on CUDA — through `train.train_one_epoch`, the loop `fit` runs.
If headstart's images/s is close to raw, the pipeline keeps the accelerator fed. Meant for a GPU (`--device cuda`);
on the CPU it runs too (small sizes), which checks the wiring.

    python bench/gpu.py ../shared/data/hymenoptera --strategy full --image-size 224 --batch-size 64 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from headstart import engine
from headstart.pipeline import build_model, decode_split
from headstart.train import resolve_strategy
from headstart.data import load_data
from headstart.strategies import apply_trainable, parameter_groups, set_train_mode, trainable_groups
from headstart.train import PixelDataset, TrainConfig, first_trainable_stage, make_optimizer, train_one_epoch
from headstart.transforms import train_transform


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--strategy", default="full")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    fabric = engine.start(args.device)  # one device, as `fit` runs it
    device = fabric.device
    cfg = TrainConfig(strategy=args.strategy, image_size=args.image_size, batch_size=args.batch_size, device=args.device)
    strategy = resolve_strategy(cfg)
    splits = load_data(args.data)
    model = build_model(cfg, strategy, len(splits.classes))
    pre = model.preprocessing
    trainable = trainable_groups(strategy, model.stage_names, 0)
    apply_trainable(model, trainable)
    start = first_trainable_stage(model, trainable)
    model.to(device).to(memory_format=torch.channels_last)
    net = fabric.setup_module(model)
    set_train_mode(model, trainable, strategy)
    optimizer = make_optimizer("adamw", parameter_groups(model, strategy, 0.01))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    # raw: uint8 batch already on the device, the same forward_batch/backward/step as training
    x = torch.randint(0, 256, (args.batch_size, 3, args.image_size, args.image_size), dtype=torch.uint8, device=device)
    y = torch.randint(0, 2, (args.batch_size,), device=device)
    steps = max(3, 768 // args.batch_size) if device.type == "cuda" else 2
    synthetic = [(x, y)] * steps
    train_one_epoch(model, net, synthetic[:1], start, pre, optimizer, scheduler, fabric, 0.1)  # warm-up
    sync(device)
    t = time.perf_counter()
    train_one_epoch(model, net, synthetic, start, pre, optimizer, scheduler, fabric, 0.1)
    sync(device)
    raw = steps * args.batch_size / (time.perf_counter() - t)

    with tempfile.TemporaryDirectory() as cache:
        cfg.cache_dir = cache
        train = decode_split(splits.train, model, cfg, "train")
        loader = DataLoader(PixelDataset(train.pixels, train.labels, train_transform(pre, strategy.augment)),
                            batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=args.workers,
                            persistent_workers=args.workers > 0, pin_memory=device.type == "cuda")
        rates = []
        for epoch in range(args.epochs + 1):
            sync(device)
            t = time.perf_counter()
            train_one_epoch(model, net, loader, start, pre, optimizer, scheduler, fabric, 0.1)
            sync(device)
            if epoch:  # the first epoch starts the workers
                rates.append(len(loader) * args.batch_size / (time.perf_counter() - t))
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
              "cores": os.cpu_count(), "strategy": args.strategy, "image_size": args.image_size,
              "batch_size": args.batch_size, "workers": args.workers, "raw_images_per_second": raw,
              "headstart_images_per_second": sorted(rates)[len(rates) // 2], "epoch_rates": rates}
    result["headstart_vs_raw"] = result["headstart_images_per_second"] / raw
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
