"""Pre-flight of a dataset: what is wrong with it, each problem with a one-line fix.

Two depths, because `train` runs the first before every run and must stay quick:

    fast   counts per class and split, empty and tiny classes, imbalance, classes missing from val,
           byte-identical files within a split and across train/val (leakage), skipped non-image files
    deep   + every image decoded (unreadable files, named), sizes and colour modes, blank images, and
           pixel-identical and near-duplicate images (a 64-bit difference hash, dHash) within and across splits

Near duplicates are found by Hamming distance between dHashes: the image is shrunk to 9x8 grey pixels and
each bit says whether a pixel is brighter than its right neighbour, so re-encoding, resizing and small
colour changes keep the hash within a few bits. A duplicate across train and val inflates val accuracy;
the same picture under two labels is a labelling error.
"""

from __future__ import annotations

import hashlib
import os
import statistics
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from headstart.data import DataSplits, ImageSet, load_data
from headstart.images import UnreadableImage, read_rgb

TINY_CLASS = 10  # fewer training images than this: a class the model can barely learn, and val is noise
IMBALANCE_WARN = 3.0  # largest / smallest class
NEAR_DUPLICATE_BITS = 4  # dHash Hamming distance (of 64) at or below which two images count as near duplicates
SMALL_IMAGE = 32  # shorter side in pixels
BLANK_STD = 2.0  # grey levels: a hash of a flat image is noise, so such images are reported, not matched
NEAR_DUPLICATE_CORR = 0.7  # a dHash match is confirmed by this correlation of 16x16 grey thumbnails: on tiny,
# blurry images (CIFAR) 64 bits alone match different pictures; real near copies measured 0.74-0.96 there


@dataclass
class Problem:
    kind: str
    severity: str  # "error": the run will be wrong or fail; "warning": results suffer; "info": worth knowing
    message: str
    fix: str
    files: list[str] = field(default_factory=list)


@dataclass
class CheckReport:
    source: str
    classes: list[str]
    counts: dict[str, dict[str, int]]  # split -> class -> images
    imbalance_ratio: float | None
    problems: list[Problem]
    deep: bool
    images: dict = field(default_factory=dict)  # deep only: sizes and modes

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


# ------------------------------------------------------------------------------------------------ loading
def scan_data(data: str | Path, *, val_fraction: float = 0.2, seed: int = 0, classes: list[str] | None = None,
              per_class: int | None = None) -> DataSplits:
    """`data.load_data` without its refusal of broken data: empty classes and val-only classes are kept, so
    they can be reported instead of stopping the check at the first one."""
    return load_data(data, val_fraction=val_fraction, seed=seed, classes=classes, per_class=per_class, strict=False)


# ------------------------------------------------------------------------------------------------ checks
def preflight(splits: DataSplits) -> list[Problem]:
    """The fast check that `train` runs first: prints a warning per problem (with its fix), returns them."""
    from headstart.console import warn

    problems = [p for p in check_splits(splits, deep=False).problems if p.severity != "info"]
    for p in problems:
        warn(f"{p.message}. Fix: {p.fix}")
    if problems:
        warn(f"`headstart check {splits.source}` lists the files and looks deeper (unreadable files, near duplicates)")
    return problems


def check_data(data: str | Path, *, deep: bool = True, **load_kwargs) -> CheckReport:
    """Check the data at `data` (a folder, a CSV or a built-in name); see `check_splits`."""
    return check_splits(scan_data(data, **load_kwargs), deep=deep)


def check_splits(splits: DataSplits, *, deep: bool = True, near_bits: int = NEAR_DUPLICATE_BITS) -> CheckReport:
    """Every problem found in `splits`, each with a fix. `deep=False` reads file bytes but decodes nothing."""
    problems: list[Problem] = []
    counts = {"train": splits.train.counts(), "val": splits.val.counts()}
    problems += _count_problems(counts)
    nonzero = [n for n in counts["train"].values() if n > 0]
    imbalance = max(nonzero) / min(nonzero) if nonzero else None
    if imbalance and imbalance >= IMBALANCE_WARN:
        small = min((c for c, n in counts["train"].items() if n > 0), key=counts["train"].get)
        big = max(counts["train"], key=counts["train"].get)
        problems.append(Problem(
            "imbalance", "warning",
            f"classes are imbalanced {imbalance:.1f}:1 ({big}: {counts['train'][big]}, {small}: {counts['train'][small]} "
            "training images); plain accuracy will flatter the model",
            f"collect more '{small}' images, or cap the large classes with --per-class {max(counts['train'][small] * 2, 10)}; "
            "judge by balanced accuracy"))
    if splits.skipped:
        problems.append(Problem("not-an-image", "info", f"{len(splits.skipped)} files in the class folders are not images "
                                "and are ignored", "move them out of the data folder", [f for f, _ in splits.skipped]))

    images: dict = {}
    refs = [("train", r, y) for r, y in zip(splits.train.refs, splits.train.labels)] + \
           [("val", r, y) for r, y in zip(splits.val.refs, splits.val.labels)]
    if deep:
        found, images, unreadable = _inspect_images(splits)
        problems += unreadable + _image_problems(images, found, refs)
        exact = [f["content"] for f in found]
        problems += _duplicate_problems(refs, exact, splits.classes, "duplicate", "identical")
        hashes = np.array([f["dhash"] if f["dhash"] is not None else 0 for f in found], dtype=np.uint64)
        usable = np.array([f["dhash"] is not None for f in found])
        thumbs = [f["thumb"] for f in found]
        near = _near_groups(hashes, usable, near_bits,
                            confirm=lambda i, j: np.corrcoef(thumbs[i], thumbs[j])[0, 1] >= NEAR_DUPLICATE_CORR)
        exact_groups = {frozenset(g) for g in _groups_by_key(exact)}
        near = [g for g in near if frozenset(g) not in exact_groups]
        problems += _group_problems(refs, near, splits.classes, "near-duplicate", "near-identical")
    else:
        keys = [_file_key(splits.train, r) for r in splits.train.refs] + [_file_key(splits.val, r) for r in splits.val.refs]
        problems += _duplicate_problems(refs, keys, splits.classes, "duplicate", "byte-identical")
    order = {"error": 0, "warning": 1, "info": 2}
    problems.sort(key=lambda p: order[p.severity])
    return CheckReport(splits.source, splits.classes, counts, imbalance, problems, deep, images)


def _count_problems(counts: dict[str, dict[str, int]]) -> list[Problem]:
    problems = []
    train, val = counts["train"], counts["val"]
    empty = [c for c, n in train.items() if n == 0]
    if empty:
        problems.append(Problem("empty-class", "error", f"no training images for class {', '.join(empty)}",
                                f"add images to train/{empty[0]}/ or delete the folder"))
    tiny = [c for c, n in train.items() if 0 < n < TINY_CLASS]
    if tiny:
        problems.append(Problem("tiny-class", "warning",
                                f"fewer than {TINY_CLASS} training images for {', '.join(f'{c} ({train[c]})' for c in tiny)}",
                                "collect more (20+ per class is a practical minimum) or merge the class with a related one"))
    no_val = [c for c, n in val.items() if n == 0 and train.get(c, 0) > 0]
    if no_val and sum(val.values()) > 0:
        problems.append(Problem("no-val-images", "warning", f"no validation images for {', '.join(no_val)}: its accuracy "
                                "is never measured", f"move a fifth of train/{no_val[0]}/ into val/{no_val[0]}/"))
    if sum(val.values()) == 0:
        problems.append(Problem("no-val-split", "error", "no validation images at all",
                                "add a val/ folder, or point at a folder of class folders to split it"))
    return problems


def _file_key(images: ImageSet, ref: str) -> str | None:
    path = Path(ref)
    if not path.is_file():
        return None  # built-in arrays: their content is compared by the deep check
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


def _inspect_images(splits: DataSplits) -> tuple[list[dict], dict, list[Problem]]:
    """Decode every image once (threads: Pillow releases the GIL): size, mode, content hash and dHash."""
    items = [(splits.train, r) for r in splits.train.refs] + [(splits.val, r) for r in splits.val.refs]

    def one(item) -> dict:
        images, ref = item
        out = {"ref": ref, "size": None, "mode": None, "content": None, "dhash": None, "thumb": None, "error": None,
               "blank": False}
        try:
            if images.read is read_rgb:
                with Image.open(ref) as header:
                    out["size"], out["mode"] = header.size, header.mode
                img = read_rgb(ref, min_size=64)
            else:
                img = images.read(ref)
                out["size"], out["mode"] = img.size, "L" if img.mode == "L" else img.mode
            pixels = np.asarray(img)
            out["content"] = hashlib.blake2b(pixels.tobytes() + str(pixels.shape).encode(), digest_size=16).hexdigest()
            out["dhash"], out["blank"] = dhash(img)
            out["thumb"] = np.asarray(img.convert("L").resize((16, 16), Image.Resampling.BOX), dtype=np.float32).ravel()
            if out["blank"]:
                out["dhash"] = None
        except UnreadableImage as e:
            out["error"] = str(e)
        except (OSError, ValueError, Image.UnidentifiedImageError) as e:
            out["error"] = f"cannot read: {e}"
        return out

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        found = list(pool.map(one, items))
    bad = [f for f in found if f["error"]]
    problems = []
    if bad:
        problems.append(Problem("unreadable", "error", f"{len(bad)} files cannot be decoded: "
                                + "; ".join(f"{f['ref']} ({f['error']})" for f in bad[:5]) + (" ..." if len(bad) > 5 else ""),
                                "delete them or re-save them from an image editor; training skips them",
                                [f["ref"] for f in bad]))
    sides = [min(f["size"]) for f in found if f["size"]]
    images = {
        "decoded": len(found) - len(bad),
        "min_side": {"min": min(sides), "median": statistics.median(sides), "max": max(sides)} if sides else None,
        "sizes": dict(Counter(f"{f['size'][0]}x{f['size'][1]}" for f in found if f["size"]).most_common(5)),
        "modes": dict(Counter(f["mode"] for f in found if f["mode"])),
    }
    return found, images, problems


def _image_problems(images: dict, found: list[dict], refs: list) -> list[Problem]:
    problems = []
    small = [f["ref"] for f in found if f["size"] and min(f["size"]) < SMALL_IMAGE]
    if small:
        problems.append(Problem("small-images", "info", f"{len(small)} images are smaller than {SMALL_IMAGE}px on a side; "
                                "they are upscaled to the working resolution",
                                "use --image-size near 4x their size (e.g. 128): larger costs compute and adds nothing",
                                small[:20]))
    grey = sum(n for m, n in images["modes"].items() if m in ("L", "LA", "I", "I;16", "F", "1"))
    if grey:
        problems.append(Problem("greyscale", "info", f"{grey} greyscale images: they are converted to RGB (3 equal channels)",
                                "nothing to do; ImageNet features still apply, less so their colour filters"))
    blank = [f["ref"] for f in found if f["blank"]]
    if blank:
        problems.append(Problem("blank", "warning", f"{len(blank)} images are (nearly) one flat colour",
                                "look at them: placeholders and failed downloads should be deleted", blank[:20]))
    return problems


def dhash(img: Image.Image) -> tuple[int, bool]:
    """64-bit difference hash of `img`, and whether the image is too flat for the hash to mean anything."""
    grey = np.asarray(img.convert("L").resize((9, 8), Image.Resampling.BOX), dtype=np.float32)
    bits = (grey[:, 1:] > grey[:, :-1]).flatten()
    return int(np.packbits(bits).view(">u8")[0]), float(grey.std()) < BLANK_STD


def _groups_by_key(keys: list) -> list[list[int]]:
    by_key: dict = {}
    for i, k in enumerate(keys):
        if k is not None:
            by_key.setdefault(k, []).append(i)
    return [g for g in by_key.values() if len(g) > 1]


def popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (numpy >= 2 has it built in; older numpy unpacks the bytes)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    return np.unpackbits(x[..., None].view(np.uint8), axis=-1).sum(-1)


def _near_groups(hashes: np.ndarray, usable: np.ndarray, max_bits: int, confirm=None) -> list[list[int]]:
    """Connected groups of images whose dHashes differ in at most `max_bits` bits (all pairs, in chunks),
    each pair accepted by `confirm(i, j)` (indices into `hashes`) when given."""
    idx = np.flatnonzero(usable)
    h = hashes[idx]
    parent = list(range(len(idx)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for start in range(0, len(h), 256):
        block = popcount(h[start : start + 256, None] ^ h[None, :])
        for a, b in zip(*np.nonzero(block <= max_bits)):
            i, j = start + int(a), int(b)
            if j > i and (confirm is None or confirm(int(idx[i]), int(idx[j]))):
                parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(idx)):
        groups.setdefault(root(i), []).append(int(idx[i]))
    return [g for g in groups.values() if len(g) > 1]


def _duplicate_problems(refs: list, keys: list, classes: list[str], kind: str, word: str) -> list[Problem]:
    return _group_problems(refs, _groups_by_key(keys), classes, kind, word)


def _group_problems(refs: list, groups: list[list[int]], classes: list[str], kind: str, word: str) -> list[Problem]:
    """Duplicate groups, split into the three problems they cause: leakage, label conflicts, repeats."""
    leak, conflict, repeat = [], [], []
    for g in groups:
        splits = {refs[i][0] for i in g}
        labels = {refs[i][2] for i in g}
        (conflict if len(labels) > 1 else leak if splits == {"train", "val"} else repeat).append(g)
    problems = []

    def names(gs: list[list[int]]) -> list[str]:
        return [refs[i][1] for g in gs for i in g]

    def example(g: list[int]) -> str:
        return " = ".join(f"{refs[i][0]}:{refs[i][1]}" for i in g[:3])

    if leak:
        val_copies = sum(1 for g in leak for i in g if refs[i][0] == "val")
        problems.append(Problem(f"{kind}-leakage", "error" if kind == "duplicate" else "warning",
                                f"{len(leak)} {word} images are in both train and val ({val_copies} val copies), e.g. "
                                f"{example(leak[0])}: val accuracy is inflated",
                                "delete the val copies (or move them all to one split)", names(leak)))
    if conflict:
        problems.append(Problem(f"{kind}-label-conflict", "error" if kind == "duplicate" else "warning",
                                f"{len(conflict)} {word} images carry different labels, e.g. "
                                + " vs ".join(f"{classes[refs[i][2]]} ({refs[i][1]})" for i in conflict[0][:2]),
                                "decide on one label and delete the other copies", names(conflict)))
    if repeat:
        extra = sum(len(g) - 1 for g in repeat)
        problems.append(Problem(kind, "warning" if kind == "duplicate" else "info",
                                f"{extra} {word} copies within a split (in {len(repeat)} groups), e.g. {example(repeat[0])}",
                                "keep one of each: copies count the same image twice in training and in the score",
                                names(repeat)))
    return problems
