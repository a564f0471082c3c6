"""Images per CPU second of one training step (forward, loss, backward, AdamW) of Lite0 at 224 px, by batch size,
BatchNorm mode and memory format: why `scratch` (which trains its BatchNorm, so takes its batch whole) is slower
per image than `full` (micro-batches of 8). Random weights and inputs: the arithmetic, not the accuracy.

    PYTHONPATH=src python bench/step_batch.py   ->  bench/results/step-batch.json
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import timm
import torch

OUT = Path(__file__).resolve().parent / "results" / "step-batch.json"
REPEATS = 3  # timed steps after one warm-up step; the fastest counts (the least disturbed by the machine)


def images_per_cpu_second(train_bn: bool, batch: int, memory_format: torch.memory_format) -> float:
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=3).train()
    if not train_bn:
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=memory_format)
    y = torch.randint(0, 3, (batch,))
    times = []
    for i in range(REPEATS + 1):
        t = time.process_time()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i:
            times.append(time.process_time() - t)
    return batch / min(times)


def main() -> None:
    rows = []
    for name, fmt in (("channels_last", torch.channels_last), ("contiguous", torch.contiguous_format)):
        for train_bn in (True, False):
            for batch in (32, 8):
                rows.append({"memory_format": name, "batchnorm": "training" if train_bn else "frozen", "batch": batch,
                             "images_per_cpu_second": round(images_per_cpu_second(train_bn, batch, fmt), 2)})
                print(rows[-1], flush=True)
    OUT.write_text(json.dumps({"model": "tf_efficientnet_lite0", "image_size": 224, "repeats": REPEATS,
                               "machine": {"processor": platform.processor() or platform.machine(),
                                           "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
                               "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
