"""Pre-flight of a dataset: what is wrong with it, each problem with a one-line fix.

Two depths, because `train` runs the first before every run and must stay quick:

    fast   counts per class and split, empty and tiny classes, imbalance, classes missing from val,
           byte-identical files within a split and across train/val (leakage), skipped non-image files
    deep   + every image decoded (unreadable files, named), sizes and colour modes, blank images, and
           pixel-identical and near-duplicate images (a 64-bit difference hash, dHash) within and across splits

Near duplicates are found in two steps. A 64-bit difference hash (dHash: the image shrunk to 9x8 grey
pixels, each bit saying whether a pixel is brighter than its right neighbour) proposes candidate pairs
within a few bits of each other, cheaply over all pairs; re-encoding, resizing and small colour changes
keep a copy within those bits. The hash sees only the coarse layout, so each candidate is then confirmed by
the correlation of the two images' 64x64 grey thumbnails: a copy stays similar at that scale, two different
pictures that share a layout (two centred guitar sketches, two close-up faces) do not.
A duplicate across train and val inflates val accuracy; the same picture under two labels is a labelling
error. Both are reported as pairs that were each measured, never as chains (see `near_duplicate_pairs`).
"""

from __future__ import annotations

import functools
import hashlib
import os
import statistics
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from headstart.console import warn
from headstart.data import DataSplits, ImageSet, content_hash, load_data
from headstart.images import UnreadableImage, open_image, read_rgb
from headstart.stats import IMBALANCE_RATIO, is_imbalanced

TINY_CLASS = 10  # fewer training images than this: a class the model can barely learn, and val is noise
IMBALANCE_FLAG = IMBALANCE_RATIO  # largest / smallest training class above which check reports it (stats.is_imbalanced)
IMBALANCE_WARN = 3.0  # ... and above which it is a warning that `train` prints too
IMBALANCE_HANDLING = ("selection and the headline use balanced accuracy; training counters it with class-balanced "
                      "batches — see `--balance`")
NEAR_DUPLICATE_BITS = 4  # dHash Hamming distance (of 64) at or below which two images are near-duplicate candidates
SMALL_IMAGE = 32  # shorter side in pixels
BLANK_STD = 2.0  # grey levels: an image this flat is reported as blank; a hash this flat is noise, so not matched
THUMBNAIL_SIDE = 64  # grey thumbnails that confirm candidates and find blank images
NEAR_DUPLICATE_CORR = 0.85  # correlation of the 64x64 thumbnails that confirms a candidate pair. Looked at by eye
# (bench/check_duplicates.py, docs/analysis.md): copies 0.86-1.00 on fer2013 (20 pairs), different faces <= 0.81;
# different pacs sketches reach 0.88 (3 of 2,241 candidates pass, against 1,516 at 16x16 >= 0.7). The price:
# 3 of 45 CIFAR copies (shifted crops, an overlaid caption) correlate 0.72-0.82 and are no longer reported.


SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}  # problems are listed in this order


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
    imbalance_ratio: float | None  # largest / smallest training class, always (None without training images)
    problems: list[Problem]
    deep: bool
    images: dict = field(default_factory=dict)  # deep only: sizes and modes
    imbalance: dict | None = None  # only when flagged: ratio, largest, smallest, counts (train), handling
    label_issues: dict | None = None  # `check --labels` only: analysis.labels.LabelIssueReport as a dict

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
    imbalance_ratio = max(nonzero) / min(nonzero) if nonzero else None
    imbalance = class_imbalance(counts["train"])
    if imbalance:
        problems.append(_imbalance_problem(imbalance))
    if splits.skipped:
        problems.append(Problem("not-an-image", "info", f"{len(splits.skipped)} files in the class folders are not images "
                                "and are ignored", "move them out of the data folder", [f for f, _ in splits.skipped]))

    images: dict = {}
    items = [(splits.train, r) for r in splits.train.refs] + [(splits.val, r) for r in splits.val.refs]
    refs = [("train", r, y) for r, y in zip(splits.train.refs, splits.train.labels)] + \
           [("val", r, y) for r, y in zip(splits.val.refs, splits.val.labels)]
    if deep:
        found, images, unreadable = inspect_images(items)
        problems += unreadable + _image_problems(images, found, refs)
        exact = [f["content"] for f in found]
        problems += _duplicate_problems(refs, exact, splits.classes, "duplicate", "identical")
        hashes = np.array([f["dhash"] if f["dhash"] is not None else 0 for f in found], dtype=np.uint64)
        usable = np.array([f["dhash"] is not None for f in found])
        pairs = near_duplicate_pairs(hashes, usable, near_bits, confirm=thumbnail_confirmation(items))
        pairs = [(i, j, bits) for i, j, bits in pairs if exact[i] != exact[j]]  # identical pairs are reported above
        problems += _near_pair_problems(refs, pairs, splits.classes)
    else:
        keys = [_file_key(image_set, r) for image_set, r in items]
        problems += _duplicate_problems(refs, keys, splits.classes, "duplicate", "byte-identical")
    problems.sort(key=lambda p: SEVERITY_ORDER[p.severity])
    return CheckReport(splits.source, splits.classes, counts, imbalance_ratio, problems, deep, images, imbalance)


def class_imbalance(train_counts: dict[str, int]) -> dict | None:
    """The numbers behind an imbalance worth reporting (largest class over IMBALANCE_FLAG times the smallest
    non-empty one), else None. Empty classes are left out: they are an error of their own, not a ratio."""
    present = {c: n for c, n in train_counts.items() if n > 0}
    if len(present) < 2:
        return None
    largest, smallest = max(present, key=present.get), min(present, key=present.get)
    ratio = present[largest] / present[smallest]
    if not is_imbalanced(list(present.values())):
        return None
    return {"ratio": round(ratio, 2), "largest": largest, "smallest": smallest, "counts": dict(train_counts),
            "handling": IMBALANCE_HANDLING}


def _imbalance_problem(imbalance: dict) -> Problem:
    """Info up to IMBALANCE_WARN, because headstart handles a moderate imbalance itself (so `train` stays quiet
    about it); a warning beyond, where the small class's few images limit what any weighting can do."""
    counts, small, big, ratio = imbalance["counts"], imbalance["smallest"], imbalance["largest"], imbalance["ratio"]
    severity = "warning" if ratio >= IMBALANCE_WARN else "info"
    message = (f"training classes are imbalanced {ratio:.1f}:1, "
               f"largest {big} ({counts[big]}) to smallest {small} ({counts[small]})")
    if len(counts) > 2:
        ranked = sorted(counts.items(), key=lambda kv: -kv[1])
        message += "; per class " + ", ".join(f"{c} {n}" for c, n in ranked[:8]) + (" ..." if len(ranked) > 8 else "")
    fix = IMBALANCE_HANDLING
    if severity == "warning":
        cap = max(counts[small] * 2, 10)
        fix += f"; more '{small}' images help most (or cap the large classes with --per-class {cap})"
    return Problem("imbalance", severity, message, fix)


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
    """The file's content hash (data's one recipe); None for built-in arrays, compared by the deep check."""
    return content_hash(ref) if Path(ref).is_file() else None


def decode_image(images: ImageSet, ref: str) -> tuple[Image.Image, tuple[int, int], str]:
    """The image as training reads it, with its stored size and colour mode. Files are decoded at a reduced
    JPEG scale (both sides still >= THUMBNAIL_SIDE): everything the check computes is that small or smaller."""
    if images.read is read_rgb:
        img = read_rgb(ref, min_size=THUMBNAIL_SIDE)  # first: a file it refuses gets its reason, not Pillow's
        with open_image(ref) as header:
            return img, header.size, header.mode
    img = images.read(ref)
    return img, img.size, "L" if img.mode == "L" else img.mode


def grey_thumbnail(img: Image.Image, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """`img` as side x side grey levels (box filter), flattened: what candidates are confirmed on."""
    return np.asarray(img.convert("L").resize((side, side), Image.Resampling.BOX), dtype=np.float32).ravel()


def thumbnail_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two thumbnails; 0 when either is flat (no structure to compare)."""
    a, b = a - a.mean(), b - b.mean()
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / norm if norm > 0 else 0.0


def thumbnail_confirmation(items: list[tuple[ImageSet, str]]) -> Callable[[int, int], bool]:
    """`confirm(i, j)` for `near_duplicate_pairs`: the 64x64 thumbnails of items i and j correlate at
    NEAR_DUPLICATE_CORR or more. Thumbnails are decoded again on demand, once each: only images in a
    candidate pair need one, and keeping 16 KB for every image of a large set would not pay."""

    @functools.cache
    def thumbnail(i: int) -> np.ndarray:
        return grey_thumbnail(decode_image(*items[i])[0])

    return lambda i, j: thumbnail_correlation(thumbnail(i), thumbnail(j)) >= NEAR_DUPLICATE_CORR


def inspect_images(items: list[tuple[ImageSet, str]]) -> tuple[list[dict], dict, list[Problem]]:
    """Decode every image once (threads: Pillow releases the GIL): size, mode, content hash and dHash."""

    def one(item) -> dict:
        images, ref = item
        out = {"ref": ref, "size": None, "mode": None, "content": None, "dhash": None, "error": None, "blank": False}
        try:
            img, out["size"], out["mode"] = decode_image(images, ref)
            pixels = np.asarray(img)
            out["content"] = hashlib.blake2b(pixels.tobytes() + str(pixels.shape).encode(), digest_size=16).hexdigest()
            # a fine regular texture (stripes, a chequerboard) averages to flat at the hash's 9x8 pixels but not at
            # 64x64: it is unfit for the hash, not blank (7 of 210 dtd-7 textures were reported blank before)
            out["dhash"], hash_is_flat = dhash(img)
            out["blank"] = float(grey_thumbnail(img).std()) < BLANK_STD
            if hash_is_flat:
                out["dhash"] = None
        except UnreadableImage as e:
            out["error"] = str(e)
        except (OSError, ValueError, Image.UnidentifiedImageError, Image.DecompressionBombError) as e:
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


def near_duplicate_pairs(hashes: np.ndarray, usable: np.ndarray, max_bits: int,
                         confirm: Callable[[int, int], bool] | None = None) -> list[tuple[int, int, int]]:
    """Pairs (i, j, bits), i < j, of usable images whose dHashes differ in at most `max_bits` bits, each pair
    accepted by `confirm(i, j)` when given; closest first. Indices are into `hashes`.

    Pairs, not groups, because a pair is what was measured. Connected components (what check did before)
    chain: A near B and B near C put A and C in one group though they may be different pictures, and a group
    of mixed labels was then shown by two members that need not differ. Complete linkage would keep every
    group's members mutually close, but it hides relations: with A~B the closer and B~C a label conflict,
    it forms {A, B} and {C} and the conflict is lost. A pair list has neither flaw; a picture stored k times
    shows up as k(k-1)/2 pairs, which the messages count as images as well as pairs.
    """
    idx = np.flatnonzero(usable)
    h = hashes[idx]
    pairs = []
    for start in range(0, len(h), 256):  # all pairs, a block of rows at a time: 256 x n distances in memory
        block = popcount(h[start : start + 256, None] ^ h[None, :])
        for a, b in zip(*np.nonzero(block <= max_bits)):
            i, j = start + int(a), int(b)
            if j > i and (confirm is None or confirm(int(idx[i]), int(idx[j]))):
                pairs.append((int(idx[i]), int(idx[j]), int(block[a, b])))
    return sorted(pairs, key=lambda p: (p[2], p[0], p[1]))


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _near_pair_problems(refs: list, pairs: list[tuple[int, int, int]], classes: list[str]) -> list[Problem]:
    """Near-duplicate pairs, split into the three problems they cause: label conflicts, leakage, repeats.
    Each example is the closest pair of its kind, so a conflict's example always shows two labels."""
    conflict = [p for p in pairs if refs[p[0]][2] != refs[p[1]][2]]
    leak = [p for p in pairs if refs[p[0]][2] == refs[p[1]][2] and refs[p[0]][0] != refs[p[1]][0]]
    repeat = [p for p in pairs if refs[p[0]][2] == refs[p[1]][2] and refs[p[0]][0] == refs[p[1]][0]]

    def names(ps: list) -> list[str]:
        return list(dict.fromkeys(refs[i][1] for p in ps for i in p[:2]))

    def where(i: int) -> str:
        return f"{refs[i][0]}:{refs[i][1]}"

    def example(ps: list) -> str:  # the closest pair of a kind
        i, j, _ = ps[0]
        return f"{where(i)} ~ {where(j)}"

    problems = []
    if conflict:
        i, j, _ = conflict[0]
        problems.append(Problem(
            "near-duplicate-label-conflict", "warning",
            f"{plural(len(conflict), 'pair')} of near-identical images ({plural(len(names(conflict)), 'image')}) "
            f"carry different labels, e.g. {classes[refs[i][2]]} ({refs[i][1]}) "
            f"vs {classes[refs[j][2]]} ({refs[j][1]})",
            "look at each pair: if it is one picture, decide on one label and delete the other copy", names(conflict)))
    if leak:
        val_copies = len({i for p in leak for i in p[:2] if refs[i][0] == "val"})
        have = "has" if val_copies == 1 else "have"
        message = (f"{plural(val_copies, 'val image')} {have} a near-identical image in train ({plural(len(leak), 'pair')}), "
                   f"e.g. {example(leak)}: val accuracy is inflated")
        problems.append(Problem("near-duplicate-leakage", "warning", message,
                                "delete the val copies (or move them all to one split)", names(leak)))
    if repeat:
        message = (f"{plural(len(repeat), 'pair')} of near-identical images within a split "
                   f"({plural(len(names(repeat)), 'image')}), e.g. {example(repeat)}")
        problems.append(Problem("near-duplicate", "info", message,
                                "keep one of each: copies count the same image twice in training and in the score",
                                names(repeat)))
    return problems


def _duplicate_problems(refs: list, keys: list, classes: list[str], kind: str, word: str) -> list[Problem]:
    return _group_problems(refs, _groups_by_key(keys), classes, kind, word)


def _group_problems(refs: list, groups: list[list[int]], classes: list[str], kind: str, word: str) -> list[Problem]:
    """Groups of identical files or pixels, split into the problems they cause: leakage, label conflicts,
    repeats. Identity is transitive, so unlike near duplicates a group here is one picture, not a chain."""
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

    def two_labels(g: list[int]) -> str:
        other = next(i for i in g if refs[i][2] != refs[g[0]][2])
        return " vs ".join(f"{classes[refs[i][2]]} ({refs[i][1]})" for i in (g[0], other))

    if leak:
        val_copies = sum(1 for g in leak for i in g if refs[i][0] == "val")
        problems.append(Problem(f"{kind}-leakage", "error",
                                f"{len(leak)} {word} images are in both train and val ({val_copies} val copies), e.g. "
                                f"{example(leak[0])}: val accuracy is inflated",
                                "delete the val copies (or move them all to one split)", names(leak)))
    if conflict:
        problems.append(Problem(f"{kind}-label-conflict", "error",
                                f"{len(conflict)} {word} images carry different labels, e.g. {two_labels(conflict[0])}",
                                "decide on one label and delete the other copies", names(conflict)))
    if repeat:
        extra = sum(len(g) - 1 for g in repeat)
        problems.append(Problem(kind, "warning",
                                f"{extra} {word} copies within a split (in {len(repeat)} groups), e.g. {example(repeat[0])}",
                                "keep one of each: copies count the same image twice in training and in the score",
                                names(repeat)))
    return problems
