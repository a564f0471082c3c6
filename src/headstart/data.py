"""Where labelled images come from: class folders, a CSV, or a built-in dataset.

Every source ends as a `DataSplits` of two `ImageSet`s (train and val) with one shared, sorted class list.
Nothing is decoded here: this module finds images, checks that they can make a classification problem,
splits and subsamples them. Decoding (and skipping unreadable files) happens once, in `pipeline.py`.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from headstart.errors import HeadstartError
from headstart.images import is_image_file, read_rgb
from headstart.paths import cache_root

BUILTIN_DATASETS = ("fashion-mnist",)
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot",
]


@dataclass
class ImageSet:
    """Labelled images: `refs[i]` (a file path, or `name:split:index` for built-in arrays) has class
    `labels[i]`, an index into `classes`. `read(ref)` opens one as an RGB PIL image."""

    classes: list[str]
    refs: list[str]
    labels: list[int]
    read: Callable[[str], Image.Image] = field(default=read_rgb, repr=False)

    def __len__(self) -> int:
        return len(self.refs)

    def counts(self) -> dict[str, int]:
        counted = Counter(self.labels)
        return {name: counted.get(i, 0) for i, name in enumerate(self.classes)}

    def subset(self, indices: Sequence[int]) -> ImageSet:
        return replace(self, refs=[self.refs[i] for i in indices], labels=[self.labels[i] for i in indices])

    def median_short_side(self, samples: int = 20) -> float | None:
        """Median shorter side of up to `samples` images spread over the set (to suggest a working size)."""
        import statistics

        sides = []
        for ref in self.refs[:: max(1, len(self) // samples)][:samples]:
            try:
                sides.append(min(self.read(ref).size))
            except Exception:  # unreadable files are reported where they are decoded, not here
                continue
        return statistics.median(sides) if sides else None

    def fingerprint(self, i: int) -> str:
        """A content hash of image i, so caches follow the pixels, not the file name or its date."""
        ref = self.refs[i]
        path = Path(ref)
        if path.is_file():
            return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
        return hashlib.blake2b(ref.encode(), digest_size=16).hexdigest()  # built-in: name:split:index is stable


@dataclass
class DataSplits:
    train: ImageSet
    val: ImageSet
    source: str
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason) found while scanning

    @property
    def classes(self) -> list[str]:
        return self.train.classes


def load_data(
    data: str | Path,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    classes: Sequence[str] | None = None,
    per_class: int | None = None,
    strict: bool = True,
) -> DataSplits:
    """Resolve `data` (a folder, a CSV file or a built-in name) into checked train/val splits.

    `strict=False` (what `headstart check` uses) keeps broken data — empty classes, classes only in val, no
    val/ folder — so that every problem can be reported instead of stopping at the first.

    A folder with `train/` and `val/` keeps its split; a folder of class folders or a CSV is split
    stratified by `val_fraction` and `seed`. `classes` keeps a subset of classes; `per_class` subsamples the
    training split to at most that many images per class (the small-data scenario), validation untouched.
    """
    if str(data) in BUILTIN_DATASETS:
        splits = load_fashion_mnist()
    else:
        path = Path(data).expanduser()
        if not path.exists():
            raise HeadstartError(f"data not found: {path} (give a folder of class folders, a CSV or 'fashion-mnist')")
        if path.is_file():
            if path.suffix.lower() != ".csv":
                raise HeadstartError(f"{path} is a file but not a .csv (expected columns path,label)")
            splits = split_stratified(load_csv(path), val_fraction, seed, source=str(path))
        elif (path / "train").is_dir():
            splits = load_train_val_folders(path) if strict else load_train_val_folders_as_found(path)
        else:
            train, skipped = load_class_folders(path)
            splits = split_stratified(train, val_fraction, seed, source=str(path), skipped=skipped)
    if classes:
        splits = keep_classes(splits, list(classes))
    if per_class:
        splits = replace(splits, train=subsample_per_class(splits.train, per_class, seed))
    if strict:
        check_splits(splits)
    return splits


def load_class_folders(root: Path, classes: list[str] | None = None) -> tuple[ImageSet, list[tuple[str, str]]]:
    """Images under `root/<class>/...` (nested folders allowed). Non-image files are skipped and listed."""
    if not root.is_dir():
        raise HeadstartError(f"not a folder: {root}")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise HeadstartError(f"{root} has no class folders: expected {root}/<class name>/<images>")
    if classes is None:
        classes = found
    refs, labels, skipped = [], [], []
    for label, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            continue
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            if is_image_file(path):
                refs.append(str(path))
                labels.append(label)
            else:
                skipped.append((str(path), f"not an image file ({path.suffix or 'no extension'})"))
    return ImageSet(classes, refs, labels), skipped


def load_train_val_folders(root: Path) -> DataSplits:
    train, skipped = load_class_folders(root / "train")
    val_root = root / "val" if (root / "val").is_dir() else root / "valid"
    if not val_root.is_dir():
        raise HeadstartError(f"{root} has train/ but no val/ folder: add one, or point at train/ to split it")
    val_found = sorted(p.name for p in val_root.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [c for c in val_found if c not in train.classes]
    if unknown:
        raise HeadstartError(
            f"val has classes that train lacks: {', '.join(unknown)} (add training images or remove them from val)"
        )
    val, val_skipped = load_class_folders(val_root, classes=train.classes)
    return DataSplits(train, val, source=str(root), skipped=skipped + val_skipped)


def load_train_val_folders_as_found(root: Path) -> DataSplits:
    """train/ and val/ with the union of their class folders, and an empty val when there is none."""
    val_root = root / "val" if (root / "val").is_dir() else root / "valid"
    names = sorted({p.name for folder in (root / "train", val_root) if folder.is_dir()
                    for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")})
    train, skipped = load_class_folders(root / "train", classes=names)
    val, val_skipped = load_class_folders(val_root, classes=names) if val_root.is_dir() else (ImageSet(names, [], []), [])
    return DataSplits(train, val, source=str(root), skipped=skipped + val_skipped)


def load_csv(path: Path) -> ImageSet:
    """A CSV with columns `path,label`; relative paths are relative to the CSV's folder."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise HeadstartError(f"{path}: expected a header row 'path,label' and at least one row")
    classes = sorted({r["label"] for r in rows})
    index = {c: i for i, c in enumerate(classes)}
    refs = [str((path.parent / r["path"]).resolve()) for r in rows]
    missing = [(line, ref) for line, ref in enumerate(refs, start=2) if not Path(ref).is_file()]  # line 1: header
    if missing:
        shown = "; ".join(f"line {line}: {ref}" for line, ref in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        files = "file does" if len(missing) == 1 else "files do"
        raise HeadstartError(f"{path}: {len(missing)} listed {files} not exist ({shown}{more}); fix the paths "
                             "(relative ones are read from the CSV's folder) or remove those rows")
    return ImageSet(classes, refs, [index[r["label"]] for r in rows])


def split_stratified(
    images: ImageSet, val_fraction: float, seed: int, source: str, skipped: list | None = None
) -> DataSplits:
    """Hold out `val_fraction` of every class (at least one image of each class that has two or more)."""
    if not 0.0 < val_fraction < 1.0:
        raise HeadstartError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    rng = random.Random(seed)
    train_idx, val_idx = [], []
    for label in range(len(images.classes)):
        members = [i for i, y in enumerate(images.labels) if y == label]
        rng.shuffle(members)
        n_val = max(1, round(len(members) * val_fraction)) if len(members) >= 2 else 0
        val_idx += members[:n_val]
        train_idx += members[n_val:]
    return DataSplits(images.subset(sorted(train_idx)), images.subset(sorted(val_idx)), source, skipped or [])


def keep_classes(splits: DataSplits, wanted: list[str]) -> DataSplits:
    unknown = [c for c in wanted if c not in splits.classes]
    if unknown:
        raise HeadstartError(f"unknown classes {', '.join(unknown)}; this data has: {', '.join(splits.classes)}")

    def pick(images: ImageSet) -> ImageSet:
        remap = {splits.classes.index(c): i for i, c in enumerate(wanted)}
        keep = [i for i, y in enumerate(images.labels) if y in remap]
        sub = images.subset(keep)
        return replace(sub, classes=list(wanted), labels=[remap[y] for y in sub.labels])

    return replace(splits, train=pick(splits.train), val=pick(splits.val))


def subsample_per_class(images: ImageSet, per_class: int, seed: int) -> ImageSet:
    """At most `per_class` images of each class, drawn with `seed` (the same seed gives the same images)."""
    rng = random.Random(seed)
    keep = []
    for label in range(len(images.classes)):
        members = [i for i, y in enumerate(images.labels) if y == label]
        keep += rng.sample(members, min(per_class, len(members)))
    return images.subset(sorted(keep))


def check_splits(splits: DataSplits) -> None:
    """Refuse data that cannot make a classifier, naming the problem and the fix."""
    train = splits.train
    if len(train) == 0:
        raise HeadstartError(f"no images found in {splits.source} (accepted: .jpg .jpeg .png .bmp .tif .webp ...)")
    if len(train.classes) < 2:
        raise HeadstartError(f"only one class ({train.classes[0]}) in {splits.source}: a classifier needs two or more")
    empty = [c for c, n in train.counts().items() if n == 0]
    if empty:
        raise HeadstartError(f"no training images for class {', '.join(empty)}: add images or remove the folder")
    if len(splits.val) == 0:
        raise HeadstartError(f"no validation images in {splits.source}: add some, or use a larger --val-fraction")


def load_fashion_mnist(root: Path | None = None) -> DataSplits:
    """Fashion-MNIST (28x28 greyscale, 10 classes) from Debian's `dataset-fashion-mnist` files, else
    torchvision's download into the headstart cache."""
    root = root or FASHION_MNIST_DIR
    names = {"train": "train", "val": "t10k"}
    if not (root / "train-images-idx3-ubyte.gz").is_file():
        root = _download_fashion_mnist()
    sets = {}
    for split, prefix in names.items():
        pixels = read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz").tolist()
        store = _ArrayImages(pixels)
        refs = [f"fashion-mnist:{split}:{i}" for i in range(len(labels))]
        sets[split] = ImageSet(list(FASHION_MNIST_CLASSES), refs, labels, read=store.read)
    return DataSplits(sets["train"], sets["val"], source=f"fashion-mnist ({root})")


@dataclass
class _ArrayImages:
    pixels: np.ndarray  # N x H x W uint8

    def read(self, ref: str) -> Image.Image:
        return Image.fromarray(self.pixels[int(ref.rsplit(":", 1)[1])]).convert("RGB")


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format: big-endian dims, then uint8 data), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _download_fashion_mnist() -> Path:
    from torchvision.datasets import FashionMNIST  # heavy, and only needed when the files are missing

    target = cache_root() / "datasets"
    try:
        FashionMNIST(str(target), train=True, download=True)
        FashionMNIST(str(target), train=False, download=True)
    except Exception as e:  # no network: say how to get the files instead
        raise HeadstartError(
            "Fashion-MNIST not found under /usr/share/datasets/fashion-mnist and the download failed "
            f"({type(e).__name__}). Install it with: sudo apt-get install dataset-fashion-mnist"
        ) from e
    return target / "FashionMNIST" / "raw"
