"""The reference: the method of PyTorch's "Transfer Learning for Computer Vision" tutorial, on headstart's backbone.

https://pytorch.org/tutorials/beginner/transfer_learning_tutorial.html — what it does, kept here:
- torchvision `ImageFolder` + `DataLoader` (batch 4, shuffled), decoding every JPEG again in every epoch;
- train: RandomResizedCrop(S) + RandomHorizontalFlip, val: Resize(S * 256/224) + CenterCrop(S), ToTensor, Normalize;
- every epoch pushes every train and val image through the whole network, frozen parts included;
- SGD(lr=0.001, momentum=0.9) on the trainable parameters, StepLR(step_size=7, gamma=0.1), `model.train()` for
  the train phase (so the BatchNorm statistics of frozen layers drift too, as in the tutorial), the best val
  accuracy's weights are kept.
- `linear` is the tutorial's "ConvNet as fixed feature extractor"; `partial` is its fine-tuning loop restricted
  to the same last k stage groups + head that headstart's `partial` trains by default (cheaper than fine-tuning every layer,
  so the comparison is about caching and the input pipeline, not about how much trains).

What differs from the tutorial, so that only the method differs from headstart: the model is headstart's
`efficientnet_lite0` (not ResNet-18) with its own mean/std, the image size S is a parameter, the data is the
exact file list headstart trains on (`headstart.data.load_data`, so `--per-class` draws the same images), and
`num_workers` defaults to the machine's cores (the tutorial's 4 would oversubscribe 2 cores).

    python bench/tutorial.py ../shared/data/hymenoptera --mode linear --epochs 25 --json out.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from headstart.backbones import load_backbone
from headstart.data import load_data
from headstart.strategies import get_strategy


def tutorial_transforms(size: int, mean, std) -> dict[str, transforms.Compose]:
    return {
        "train": transforms.Compose([
            transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
            transforms.ToTensor(), transforms.Normalize(mean, std),
        ]),
        "val": transforms.Compose([
            transforms.Resize(round(size * 256 / 224)), transforms.CenterCrop(size),
            transforms.ToTensor(), transforms.Normalize(mean, std),
        ]),
    }


def image_folder(root: Path, files: list[str], transform) -> datasets.ImageFolder:
    """torchvision's ImageFolder on `root`, restricted to `files` (the images headstart trains on)."""
    dataset = datasets.ImageFolder(str(root), transform=transform)
    wanted = {os.path.realpath(f) for f in files}
    dataset.samples = [s for s in dataset.samples if os.path.realpath(s[0]) in wanted]
    dataset.imgs, dataset.targets = dataset.samples, [y for _, y in dataset.samples]
    return dataset


def build(mode: str, num_classes: int) -> tuple[nn.Module, list[nn.Parameter]]:
    model = load_backbone("efficientnet_lite0")
    model.reset_head(num_classes)
    k = get_strategy("partial").phases[0].train_last  # the same last k stage groups as headstart's default partial
    trainable = {"linear": ["head"], "partial": [*model.stage_names[-k:], "head"]}[mode]
    for name in model.group_names:
        model.group(name).requires_grad_(name in trainable)
    return model, [p for p in model.parameters() if p.requires_grad]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--mode", choices=("linear", "partial"), default="linear")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--per-class", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    t_job = time.perf_counter()
    torch.manual_seed(args.seed)

    splits = load_data(args.data, seed=args.seed, per_class=args.per_class)
    model, params = build(args.mode, len(splits.classes))
    pre = model.preprocessing
    tf = tutorial_transforms(args.image_size, pre.mean, pre.std)
    root = Path(args.data)
    image_sets = {"train": image_folder(root / "train", splits.train.refs, tf["train"]),
                  "val": image_folder(root / "val", splits.val.refs, tf["val"])}
    loaders = {phase: DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=args.workers)
               for phase, ds in image_sets.items()}
    sizes = {phase: len(ds) for phase, ds in image_sets.items()}
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(params, lr=0.001, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)

    # the tutorial's train_model, unchanged but for the timing
    t_loop = time.perf_counter()
    best_wts, best_acc, history = copy.deepcopy(model.state_dict()), 0.0, []
    for epoch in range(args.epochs):
        t_epoch, row = time.perf_counter(), {"epoch": epoch + 1}
        for phase in ("train", "val"):
            model.train() if phase == "train" else model.eval()
            running_loss, running_corrects = 0.0, 0
            for inputs, labels in loaders[phase]:
                optimizer.zero_grad()
                with torch.set_grad_enabled(phase == "train"):
                    outputs = model(inputs)
                    _, preds = torch.max(outputs, 1)
                    loss = criterion(outputs, labels)
                    if phase == "train":
                        loss.backward()
                        optimizer.step()
                running_loss += loss.item() * inputs.size(0)
                running_corrects += torch.sum(preds == labels.data).item()
            if phase == "train":
                scheduler.step()
            row[f"{phase}_loss"] = running_loss / sizes[phase]
            row[f"{phase}_accuracy"] = running_corrects / sizes[phase]
            if phase == "val" and row["val_accuracy"] > best_acc:
                best_acc, best_wts = row["val_accuracy"], copy.deepcopy(model.state_dict())
        row["seconds"] = time.perf_counter() - t_epoch
        history.append(row)
        print(f"epoch {epoch + 1}/{args.epochs} train acc {row['train_accuracy']:.3f} "
              f"val acc {row['val_accuracy']:.3f} ({row['seconds']:.1f}s)", flush=True)
    model.load_state_dict(best_wts)
    loop_seconds = time.perf_counter() - t_loop

    result = {"method": "tutorial", "mode": args.mode, "best_val_accuracy": best_acc, "epochs": args.epochs,
              "n_train": sizes["train"], "n_val": sizes["val"], "image_size": args.image_size,
              "batch_size": args.batch_size, "workers": args.workers, "loop_seconds": loop_seconds,
              "job_seconds_in_process": time.perf_counter() - t_job,
              "train_images_per_second": sizes["train"] * args.epochs / loop_seconds,
              "epoch_seconds_median": statistics.median(r["seconds"] for r in history), "history": history}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "history"}))


if __name__ == "__main__":
    main()
