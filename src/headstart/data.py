"""Where labelled images come from, and which of three roles each one plays.

A result is only evidence if it comes from images nothing was selected on, so every image gets one role:
**train** (the model is fitted on it), **val** (anything is selected on it: the best epoch, early stopping, the
best seed, a tuned default) and **test** (the figure that is reported, looked at once). A source ships some
roles itself (train/, val/ and test/ folders, a CSV `split` column, Fashion-MNIST's official t10k images);
whatever it does not ship is carved here, stratified and with a seed:

- an unsplit source (a folder of class folders, a CSV without `split`): `test_fraction` first, then
  `val_fraction` of the rest;
- a source that ships train but no val: val from the training images the `per_class` subsample leaves unused
  (images nothing else touches), else `val_fraction` of the training images;
- `val_as_test=True` makes a shipped val/ the test set, and val is then carved from train as above.

`kfold_splits` instead pools every labelled image and makes each fold's held-out part its test set.
`DataSplits.roles` says in words where each role came from; `role_fingerprints` names each role's content.

Nothing is decoded here: this module finds images, checks that they can make a classification problem,
assigns roles and subsamples. Decoding (and skipping unreadable files) happens once, in `cache.py`.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
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
ROLES = ("train", "val", "test")
CSV_SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


FileStamp = tuple[int, int, int] | None  # (mtime in ns, size, inode) of a file; None for a built-in ref


def file_stamp(ref: str) -> FileStamp:
    """What changes when a file is rewritten, for the price of a stat instead of a read. (A rewrite in place
    to the same size within one kernel clock tick, a few ms, would go unseen.)"""
    try:
        stat = os.stat(ref)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


def content_hash(ref: str) -> str:
    """The one file hash of the package: blake2b of the file's bytes, so caches and fingerprints follow the
    pixels, not the file's name or date. A built-in image (`name:split:index`) is named by its stable ref."""
    path = Path(ref)
    if path.is_file():
        return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
    return hashlib.blake2b(ref.encode(), digest_size=16).hexdigest()


@dataclass
class ImageSet:
    """Labelled images: `refs[i]` (a file path, or `name:split:index` for built-in arrays) has class
    `labels[i]`, an index into `classes`. `read(ref)` opens one as an RGB PIL image.

    `content_hashes` memoizes `content_hash` by ref, with the file's `file_stamp` at hashing time: subsets
    (and pools) share it, so each file of a load is read for hashing once per process however many roles,
    folds and caches ask, and an edited file (new date, size or inode) is read again."""

    classes: list[str]
    refs: list[str]
    labels: list[int]
    read: Callable[[str], Image.Image] = field(default=read_rgb, repr=False)
    content_hashes: dict[str, tuple[FileStamp, str]] = field(default_factory=dict, repr=False, compare=False)

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
        """A content hash of image i (see `content_hash`), read again only when the file changed."""
        ref = self.refs[i]
        stamp = file_stamp(ref)
        known = self.content_hashes.get(ref)
        if known is None or known[0] != stamp:
            known = self.content_hashes[ref] = (stamp, content_hash(ref))
        return known[1]

    def fingerprints(self) -> list[str]:
        """`fingerprint(i)` for every image. One thread on purpose: the files are small (cifar's are ~1 KB) and
        blake2b keeps the GIL below 2 KB, so a thread pool measured twice as slow as this loop."""
        return [self.fingerprint(i) for i in range(len(self))]


def pool_images(sets: Sequence[ImageSet]) -> ImageSet:
    """One ImageSet of all images of `sets` (same classes, same reader), keeping the hashes already known."""
    first = sets[0]
    if any(s.classes != first.classes or s.read != first.read for s in sets):
        raise ValueError("pool_images needs sets with the same classes and reader")
    known = {ref: h for s in sets for ref, h in s.content_hashes.items()}
    return ImageSet(list(first.classes), [r for s in sets for r in s.refs], [y for s in sets for y in s.labels],
                    first.read, known)


@dataclass
class DataSplits:
    """The three roles of one dataset, with one shared class list. `test` is None when the data has no test
    split (then nothing here may be reported as a test figure); `roles` says where each role came from."""

    train: ImageSet
    val: ImageSet
    source: str
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason) found while scanning
    test: ImageSet | None = None
    roles: str = ""

    @property
    def classes(self) -> list[str]:
        return self.train.classes


@dataclass
class FoundImages:
    """A source's labelled images in the roles it ships them in ("unsplit" when it ships none), with where
    each role lives in words (for `DataSplits.roles`)."""

    sets: dict[str, ImageSet]
    where: dict[str, str]
    source: str
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return next(iter(self.sets.values())).classes


def load_data(
    data: str | Path,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    classes: Sequence[str] | None = None,
    per_class: int | None = None,
    strict: bool = True,
    test_fraction: float = 0.0,
    val_as_test: bool = False,
    val_per_class: int | None = None,
) -> DataSplits:
    """Resolve `data` (a folder, a CSV file or a built-in name) into checked train/val/test splits.

    `strict=False` (what `headstart check` uses) keeps broken data — empty classes, classes only in val or
    test — so that every problem can be reported instead of stopping at the first.

    Roles the source ships are kept; the others are carved as the module docstring says. `classes` keeps a
    subset of classes (first, so the other classes never affect a draw); `per_class` subsamples train to at
    most that many images per class (the small-data scenario); `val_per_class` caps val the same way. Every
    draw uses `seed`, so the same arguments give the same images.
    """
    found = find_images(data, strict=strict)
    if classes:
        found = keep_classes(found, list(classes))
    if val_as_test:
        found = use_val_as_test(found)
    splits = assign_roles(found, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                          per_class=per_class, val_per_class=val_per_class)
    if strict:
        check_splits(splits)
    return splits


def find_images(data: str | Path, *, strict: bool = True) -> FoundImages:
    """The labelled images at `data` in the roles the source ships (nothing is split or drawn here)."""
    if str(data) in BUILTIN_DATASETS:
        return load_fashion_mnist()
    path = Path(data).expanduser()
    if not path.exists():
        raise HeadstartError(f"data not found: {path} (give a folder of class folders, a CSV or 'fashion-mnist')")
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise HeadstartError(f"{path} is a file but not a .csv (expected columns path,label)")
        return load_csv(path)
    if (path / "train").is_dir():
        return load_split_folders(path, strict=strict)
    images, skipped = load_class_folders(path)
    return FoundImages({"unsplit": images}, {"unsplit": "the class folders"}, str(path), skipped)


def keep_classes(found: FoundImages, wanted: list[str]) -> FoundImages:
    """Only the `wanted` classes, in that order, in every role."""
    unknown = [c for c in wanted if c not in found.classes]
    if unknown:
        raise HeadstartError(f"unknown classes {', '.join(unknown)}; this data has: {', '.join(found.classes)}")
    remap = {found.classes.index(c): i for i, c in enumerate(wanted)}

    def pick(images: ImageSet) -> ImageSet:
        sub = images.subset([i for i, y in enumerate(images.labels) if y in remap])
        return replace(sub, classes=list(wanted), labels=[remap[y] for y in sub.labels])

    return replace(found, sets={role: pick(images) for role, images in found.sets.items()})


def use_val_as_test(found: FoundImages) -> FoundImages:
    """The shipped val split becomes test (reported on, never selected on); val will be carved from train."""
    if "test" in found.sets:
        raise HeadstartError(f"{found.source} ships its own test split: drop --val-as-test")
    if "val" not in found.sets:
        raise HeadstartError(f"{found.source} ships no val split to use as test: drop --val-as-test, "
                             "or use --test-fraction to hold out test images")
    sets, where = dict(found.sets), dict(found.where)
    sets["test"], where["test"] = sets.pop("val"), where.pop("val")
    return replace(found, sets=sets, where=where)


def assign_roles(found: FoundImages, *, val_fraction: float, test_fraction: float, seed: int,
                 per_class: int | None, val_per_class: int | None) -> DataSplits:
    """Carve the roles `found` does not ship, subsample, and say where each role came from."""
    sets, where = dict(found.sets), dict(found.where)
    if test_fraction and "unsplit" not in sets:
        raise HeadstartError(f"--test-fraction splits unsplit data, but {found.source} ships its own split "
                             f"({', '.join(sets)}): drop --test-fraction (or use --val-as-test to test on val)")
    if "unsplit" in sets:
        sets, where = split_unsplit(sets.pop("unsplit"), where.pop("unsplit"), val_fraction, test_fraction, seed)
    if "val" in sets:
        train, val = sets["train"], sets["val"]
        if per_class:
            train = subsample_per_class(train, per_class, seed)
            where["train"] = f"{per_class}/class drawn from {where['train']}"
    else:
        train, val, where["train"], where["val"] = carve_val_from_train(
            sets["train"], where["train"], per_class, val_fraction, seed)
    if val_per_class:
        val = subsample_per_class(val, val_per_class, seed)
        where["val"] = f"at most {val_per_class}/class of {where['val']}"
    test = sets.get("test")
    note = "; ".join(f"{role}: {where[role]}" if role in where else f"{role}: none" for role in ROLES)
    return DataSplits(train, val, found.source, found.skipped, test=test, roles=note)


def split_unsplit(images: ImageSet, origin: str, val_fraction: float, test_fraction: float,
                  seed: int) -> tuple[dict[str, ImageSet], dict[str, str]]:
    """Test first (`test_fraction`, none at 0), then `val_fraction` of the rest, both stratified with `seed`."""
    check_fraction("--val-fraction", val_fraction)
    sets, where = {}, {}
    rest = images
    if test_fraction:
        check_fraction("--test-fraction", test_fraction)
        kept, held = stratified_holdout(images.labels, test_fraction, seed, at_least_one=False)
        sets["test"], rest = images.subset(held), images.subset(kept)
        require_test_image_per_class(sets["test"], images, test_fraction)
        where["test"] = f"{test_fraction:.0%} of {origin}, stratified (seed {seed})"
    kept, held = stratified_holdout(rest.labels, val_fraction, seed)
    sets["train"], sets["val"] = rest.subset(kept), rest.subset(held)
    after_test = " not held out for test" if test_fraction else ""
    where["val"] = f"{val_fraction:.0%} of {origin}{after_test}, stratified (seed {seed})"
    where["train"] = f"the rest of {origin}"
    return sets, where


def carve_val_from_train(train: ImageSet, origin: str, per_class: int | None, val_fraction: float,
                         seed: int) -> tuple[ImageSet, ImageSet, str, str]:
    """Val from the training images the `per_class` subsample leaves unused (images that would otherwise do
    nothing); a class with none to spare gives `val_fraction` of its training images instead.
    Returns (train, val, where train came from, where val came from)."""
    kept = set(per_class_sample(train.labels, per_class, seed)) if per_class else set(range(len(train)))
    spare = [i for i in range(len(train)) if i not in kept]
    spare_labels = {train.labels[i] for i in spare}
    short = [i for i in range(len(train)) if train.labels[i] not in spare_labels]  # every image of a short class
    if short:
        check_fraction("--val-fraction", val_fraction)
    short_kept, short_held = stratified_holdout([train.labels[i] for i in short], val_fraction, seed)
    train_idx = sorted([i for i in kept if train.labels[i] in spare_labels] + [short[j] for j in short_kept])
    val_idx = sorted(spare + [short[j] for j in short_held])
    train_note = f"{per_class}/class drawn from {origin}" if per_class else origin
    if not spare:
        val_note = f"{val_fraction:.0%} of {origin}, stratified (seed {seed})"
        train_note = f"the rest of {origin}"
    else:
        val_note = f"the training images the {per_class}/class subsample left unused"
        short_names = sorted({train.classes[train.labels[i]] for i in short})
        if short_names:
            val_note += f" ({', '.join(short_names)}: none to spare, so {val_fraction:.0%} of their training images)"
    return train.subset(train_idx), train.subset(val_idx), train_note, val_note


def check_fraction(flag: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise HeadstartError(f"{flag} must be between 0 and 1, got {value}")


def require_test_image_per_class(test: ImageSet, pooled: ImageSet, test_fraction: float) -> None:
    """A class with no test image would silently drop out of the reported figure: refuse, and say the
    smallest --test-fraction that gives every class one."""
    available = pooled.counts()
    missing = [c for c, n in test.counts().items() if n == 0 and available[c] > 0]
    if not missing:
        return
    smallest = min(available[c] for c in missing)
    enough = next((h / 100 for h in range(1, 100) if round(smallest * h / 100) >= 1), 1.0)
    raise HeadstartError(
        f"--test-fraction {test_fraction} leaves class {', '.join(missing)} with no test image "
        f"({smallest} images): use --test-fraction {enough:g} or more, or add images to that class")


def stratified_holdout(labels: Sequence[int], fraction: float, seed: int, *,
                       at_least_one: bool = True) -> tuple[list[int], list[int]]:
    """Positions (kept, held), both sorted: `fraction` of every class held out, drawn with `seed`.

    With `at_least_one` every class of two or more images holds out at least one, so val never misses a
    class; without it, a class whose share rounds to zero holds out none, and the caller decides."""
    rng = random.Random(seed)
    kept, held = [], []
    for label in sorted(set(labels)):
        members = [i for i, y in enumerate(labels) if y == label]
        rng.shuffle(members)
        n_held = round(len(members) * fraction)
        if at_least_one:
            n_held = max(1, n_held) if len(members) >= 2 else 0
        held += members[:n_held]
        kept += members[n_held:]
    return sorted(kept), sorted(held)


def per_class_sample(labels: Sequence[int], per_class: int, seed: int) -> list[int]:
    """The package's one per-class subsampling recipe: positions of at most `per_class` images of each class,
    drawn with `seed` (the same seed gives the same images), sorted."""
    rng = random.Random(seed)
    keep = []
    for label in sorted(set(labels)):
        members = [i for i, y in enumerate(labels) if y == label]
        keep += rng.sample(members, min(per_class, len(members)))
    return sorted(keep)


def subsample_per_class(images: ImageSet, per_class: int, seed: int) -> ImageSet:
    """At most `per_class` images of each class, drawn with `seed` (see `per_class_sample`)."""
    return images.subset(per_class_sample(images.labels, per_class, seed))


def kfold_splits(
    data: str | Path,
    k: int,
    *,
    seed: int = 0,
    val_fraction: float = 0.2,
    classes: Sequence[str] | None = None,
    per_class: int | None = None,
    val_per_class: int | None = None,
) -> list[DataSplits]:
    """Stratified K-fold over every labelled image of `data` (its train, val and test pooled): fold i tests on
    its i-th part, so every image is a test image exactly once; the other parts are split into an inner
    train and val (stratified `val_fraction`), `per_class` subsamples the inner train, `val_per_class` caps val.
    """
    # imported here: scikit-learn (with SciPy) adds 1-3 s to every command's start, and only --folds needs it
    from sklearn.model_selection import StratifiedKFold

    found = find_images(data)
    if classes:
        found = keep_classes(found, list(classes))
    everything = pool_images([found.sets[role] for role in ("train", "val", "test", "unsplit") if role in found.sets])
    check_fold_count(everything, k)
    check_fraction("--val-fraction", val_fraction)
    folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    splits = []
    for i, (rest_idx, test_idx) in enumerate(folds.split(np.zeros(len(everything)), everything.labels), 1):
        rest = everything.subset(rest_idx.tolist())
        kept, held = stratified_holdout(rest.labels, val_fraction, seed)
        train, val = rest.subset(kept), rest.subset(held)
        train_note = f"the rest of the other {k - 1} folds"
        val_note = f"{val_fraction:.0%} of the other {k - 1} folds, stratified (seed {seed})"
        if per_class:
            train = subsample_per_class(train, per_class, seed)
            train_note = f"{per_class}/class drawn from {train_note}"
        if val_per_class:
            val = subsample_per_class(val, val_per_class, seed)
            val_note = f"at most {val_per_class}/class of {val_note}"
        roles = (f"train: {train_note}; val: {val_note}; test: fold {i} of {k} (stratified, seed {seed}) of all "
                 f"{len(everything)} labelled images")
        fold = DataSplits(train, val, found.source, found.skipped, test=everything.subset(test_idx.tolist()),
                          roles=roles)
        check_splits(fold)
        splits.append(fold)
    return splits


def check_fold_count(images: ImageSet, k: int) -> None:
    if k < 2:
        raise HeadstartError(f"--folds must be 2 or more, got {k}")
    counts = {c: n for c, n in images.counts().items() if n > 0}
    smallest = min(counts, key=counts.get)
    if counts[smallest] < k:
        raise HeadstartError(f"--folds {k} needs at least {k} images of every class; {smallest} has "
                             f"{counts[smallest]}: use fewer folds, or add images")


def role_fingerprints(splits: DataSplits) -> dict[str, str]:
    """One hash per role present, of its sorted (content hash, class name) pairs: equal exactly when the role
    holds the same images with the same labels, whatever their order, file names or dates."""
    roles = {"train": splits.train, "val": splits.val, "test": splits.test}
    return {role: content_fingerprint(images) for role, images in roles.items() if images is not None}


def content_fingerprint(images: ImageSet) -> str:
    pairs = sorted(zip(images.fingerprints(), (images.classes[y] for y in images.labels)))
    return hashlib.blake2b(json.dumps(pairs).encode(), digest_size=16).hexdigest()


def load_class_folders(root: Path, classes: list[str] | None = None) -> tuple[ImageSet, list[tuple[str, str]]]:
    """Images under `root/<class>/...` (nested folders allowed). Non-image files are skipped and listed."""
    if not root.is_dir():
        raise HeadstartError(f"not a folder: {root}")
    found = class_folder_names(root)
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


def class_folder_names(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_split_folders(root: Path, *, strict: bool = True) -> FoundImages:
    """`train/` with optional `val/` (or `valid/`) and `test/`, each of class folders, as shipped.

    Strict: the classes are train's, and a val or test class that train lacks is refused. Not strict (for
    `headstart check`): the union of all folders' classes, so such classes can be reported."""
    folders = {"train": root / "train", "val": root / "val" if (root / "val").is_dir() else root / "valid",
               "test": root / "test"}
    folders = {role: folder for role, folder in folders.items() if folder.is_dir()}
    if strict:
        classes = class_folder_names(folders["train"])
        for role in ("val", "test"):
            unknown = [c for c in class_folder_names(folders[role]) if c not in classes] if role in folders else []
            if unknown:
                raise HeadstartError(f"{role} has classes that train lacks: {', '.join(unknown)} "
                                     f"(add training images or remove them from {folders[role].name}/)")
    else:
        classes = sorted({name for folder in folders.values() for name in class_folder_names(folder)})
    sets, skipped = {}, []
    for role, folder in folders.items():
        sets[role], found_skipped = load_class_folders(folder, classes=classes or None)
        skipped += found_skipped
    where = {role: f"the shipped {folder.name}/ folder" for role, folder in folders.items()}
    return FoundImages(sets, where, str(root), skipped)


def load_csv(path: Path) -> FoundImages:
    """A CSV with columns `path,label` and optionally `split` (train, val or test; valid and validation mean
    val). Relative paths are relative to the CSV's folder. Without `split` the rows are unsplit."""
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
    images = ImageSet(classes, refs, [index[r["label"]] for r in rows])
    if "split" not in rows[0]:
        return FoundImages({"unsplit": images}, {"unsplit": "the CSV's rows"}, str(path))
    roles = csv_roles(path, rows)
    if "train" not in roles:
        raise HeadstartError(f"{path}: no row has split 'train'; mark the training rows train")
    sets = {role: images.subset([i for i, r in enumerate(roles) if r == role]) for role in ROLES if role in roles}
    return FoundImages(sets, {role: f"the CSV rows marked {role}" for role in sets}, str(path))


def csv_roles(path: Path, rows: list[dict[str, str]]) -> list[str]:
    """Each row's role from its `split` cell, or an error naming the lines whose value is not a role."""
    roles = [CSV_SPLIT_NAMES.get((r["split"] or "").strip().lower()) for r in rows]
    bad = [(line, rows[line - 2]["split"]) for line, role in enumerate(roles, start=2) if role is None]
    if bad:
        shown = "; ".join(f"line {line}: {value!r}" for line, value in bad[:10])
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise HeadstartError(f"{path}: split must be train, val (or valid, validation) or test ({shown}{more}); "
                             "fix those rows, or drop the split column to split by --val-fraction")
    return roles


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
    if splits.test is not None:
        if len(splits.test) == 0:
            raise HeadstartError(f"no test images in {splits.source}: add some to its test split, or remove it")
        trained = {c for c, n in train.counts().items() if n > 0}
        untrained = [c for c, n in splits.test.counts().items() if n > 0 and c not in trained]
        if untrained:
            raise HeadstartError(f"test has classes that train lacks: {', '.join(untrained)} "
                                 "(add training images or remove them from test)")


def load_fashion_mnist(root: Path | None = None) -> FoundImages:
    """Fashion-MNIST (28x28 greyscale, 10 classes) from Debian's `dataset-fashion-mnist` files, else
    torchvision's download into the headstart cache. The official t10k images are its test split."""
    root = root or FASHION_MNIST_DIR
    if not (root / "train-images-idx3-ubyte.gz").is_file():
        root = _download_fashion_mnist()
    prefixes = {"train": "train", "test": "t10k"}
    store = _ArrayImages({role: read_idx(root / f"{prefix}-images-idx3-ubyte.gz") for role, prefix in prefixes.items()})
    sets = {}
    for role, prefix in prefixes.items():
        labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz").tolist()
        refs = [f"fashion-mnist:{role}:{i}" for i in range(len(labels))]
        sets[role] = ImageSet(list(FASHION_MNIST_CLASSES), refs, labels, read=store.read)
    where = {"train": "the official training images", "test": "the official t10k images"}
    return FoundImages(sets, where, source=f"fashion-mnist ({root})")


@dataclass
class _ArrayImages:
    """Built-in images kept as arrays: `name:split:index` reads image `index` of `pixels[split]`. One store
    serves every split, so the splits can be pooled (`kfold_splits`)."""

    pixels: dict[str, np.ndarray]  # split -> N x H x W uint8

    def read(self, ref: str) -> Image.Image:
        _, split, index = ref.rsplit(":", 2)
        return Image.fromarray(self.pixels[split][int(index)]).convert("RGB")


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


def imagenet_images(folder: Path) -> ImageSet:
    """A folder of ImageNet synset folders (n01440764/ ...) labelled with the 1000-class index."""
    from timm.data import ImageNetInfo

    synsets = ImageNetInfo().label_names()
    index = {s: i for i, s in enumerate(synsets)}
    found, _ = load_class_folders(folder)
    unknown = [c for c in found.classes if c not in index]
    if unknown:
        raise HeadstartError(f"{folder}: folders must be ImageNet synsets (like n01440764); found {unknown[0]}")
    return ImageSet(synsets, found.refs, [index[found.classes[y]] for y in found.labels])


def image_id(ref: str, source: str) -> str:
    """A test image's name in records: its path relative to the data source (the folder, or a CSV's folder), so
    the same images get the same ids wherever the data lies; a built-in ref (`name:split:index`) as it is."""
    path = Path(ref)
    if not path.is_absolute() and not path.exists():
        return ref
    base = Path(source)
    base = base.parent if base.is_file() else base
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return path.as_posix()
