"""Images per second of the input pipeline alone (no model): the tutorial's against headstart's.

- tutorial: ImageFolder -> PIL decode -> RandomResizedCrop + flip -> ToTensor -> Normalize, every epoch.
- headstart: decode once into the uint8 store (timed separately, cold cache), then per epoch: uint8 crop +
  flip + colour jitter (the `light` preset) in the DataLoader, normalisation on the whole batch.
Each pipeline is iterated for `--epochs` epochs after one warm-up epoch; the figure is the median epoch.

    python bench/pipeline.py ../shared/data/hymenoptera --image-size 224
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from torch.utils.data import DataLoader

from headstart.backbones import resolve_backbone
from headstart.cache import decode_images
from headstart.data import load_data
from headstart.train import PixelDataset, default_workers
from headstart.transforms import normalize_batch, train_transform

from tutorial import image_folder, tutorial_transforms


def epoch_rates(loader: DataLoader, epochs: int, finish=lambda x: x) -> list[float]:
    rates = []
    for epoch in range(epochs + 1):
        t, n = time.perf_counter(), 0
        for x, _ in loader:
            finish(x)
            n += len(x)
        if epoch:  # the first epoch starts the workers
            rates.append(n / (time.perf_counter() - t))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--per-class", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    splits = load_data(args.data, per_class=args.per_class)
    pre = resolve_backbone("efficientnet_lite0").preprocessing.with_image_size(args.image_size)
    workers = min(4, os.cpu_count() or 1)

    tf = tutorial_transforms(args.image_size, pre.mean, pre.std)["train"]
    tutorial = DataLoader(image_folder(Path(args.data) / "train", splits.train.refs, tf), batch_size=args.batch_size,
                          shuffle=True, num_workers=workers, persistent_workers=True)
    tutorial_rates = epoch_rates(tutorial, args.epochs)

    with tempfile.TemporaryDirectory() as cache:
        t = time.perf_counter()
        decoded = decode_images(splits.train, pre, cache)
        decode_seconds = time.perf_counter() - t
        labels = [splits.train.labels[i] for i in decoded.kept]
        hs_workers = default_workers("light")
        headstart = DataLoader(PixelDataset(decoded.pixels, labels, train_transform(pre, "light")),
                               batch_size=args.batch_size, shuffle=True, num_workers=hs_workers, persistent_workers=hs_workers > 0)
        headstart_rates = epoch_rates(headstart, args.epochs, finish=lambda x: normalize_batch(x, pre))

    n = len(decoded.kept)
    result = {
        "case": "pipeline", "n_train": n, "image_size": args.image_size, "batch_size": args.batch_size,
        "tutorial": {"workers": workers, "epoch_images_per_second": tutorial_rates,
                     "images_per_second": statistics.median(tutorial_rates)},
        "headstart": {"workers": hs_workers, "epoch_images_per_second": headstart_rates,
                      "images_per_second": statistics.median(headstart_rates), "decode_once_seconds": decode_seconds,
                      "decode_once_images_per_second": n / decode_seconds, "store_size": pre.store_size},
    }
    result["ratio"] = result["headstart"]["images_per_second"] / result["tutorial"]["images_per_second"]
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
