"""The physical limit of feature extraction: every train and val image decoded and pushed through the backbone once.

A plain job with nothing cached and nothing trained: torchvision ImageFolder with the eval transform
(Resize + CenterCrop, what any feature extractor needs), a DataLoader over the machine's cores, one forward pass
per image in inference mode. `headstart train --strategy linear` is measured against this job.

    python bench/forward_once.py ../shared/data/hymenoptera --image-size 224
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, DataLoader

from headstart.backbones import load_backbone
from headstart.data import load_data

from tutorial import image_folder, tutorial_transforms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--per-class", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    t_job = time.perf_counter()
    splits = load_data(args.data, per_class=args.per_class)
    model = load_backbone("efficientnet_lite0").eval().to(memory_format=torch.channels_last)
    tf = tutorial_transforms(args.image_size, model.preprocessing.mean, model.preprocessing.std)["val"]
    root = Path(args.data)
    dataset = ConcatDataset([image_folder(root / "train", splits.train.refs, tf), image_folder(root / "val", splits.val.refs, tf)])
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers)
    t_loop = time.perf_counter()
    with torch.inference_mode():
        for x, _ in loader:
            model(x.contiguous(memory_format=torch.channels_last))
    loop_seconds = time.perf_counter() - t_loop
    result = {"method": "forward-once", "n_images": len(dataset), "image_size": args.image_size,
              "loop_seconds": loop_seconds, "images_per_second": len(dataset) / loop_seconds,
              "job_seconds_in_process": time.perf_counter() - t_job}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
