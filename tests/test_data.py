"""Finding labelled images, giving each one role (train fits, val selects, test reports), checking,
splitting and subsampling them; every bad input gets a clear message."""

from __future__ import annotations

import gzip
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from headstart import data
from headstart.data import (ImageSet, check_splits, kfold_splits, load_data, read_idx, role_fingerprints,
                            subsample_per_class)
from headstart.errors import HeadstartError

from conftest import draw, make_folder, needs_shared


def files(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*.png")}


def test_train_val_folders_keep_their_split(image_folder):
    splits = load_data(image_folder)
    assert splits.classes == ["blue", "red"]
    assert len(splits.train) == 12 and len(splits.val) == 8
    assert splits.train.counts() == {"blue": 6, "red": 6}
    assert splits.test is None and "test: none" in splits.roles


def test_train_val_test_folders_keep_their_three_roles(tmp_path):
    for role, n, seed in (("train", 5, 1), ("val", 3, 2), ("test", 2, 3)):
        make_folder(tmp_path / role, n=n, seed=seed)
    splits = load_data(tmp_path, per_class=4)
    assert set(splits.train.refs) <= files(tmp_path / "train") and splits.train.counts() == {"blue": 4, "red": 4}
    assert set(splits.val.refs) == files(tmp_path / "val")
    assert set(splits.test.refs) == files(tmp_path / "test") and splits.test.classes == splits.classes
    assert splits.roles == ("train: 4/class drawn from the shipped train/ folder; val: the shipped val/ folder; "
                            "test: the shipped test/ folder")


def test_val_as_test_reports_on_val_and_draws_val_from_the_training_images_the_subsample_left_unused(tmp_path):
    make_folder(tmp_path / "train", n=8, seed=1)
    make_folder(tmp_path / "val", n=4, seed=2)
    splits = load_data(tmp_path, val_as_test=True, per_class=3, seed=5)
    assert set(splits.test.refs) == files(tmp_path / "val")
    assert splits.train.counts() == {"blue": 3, "red": 3} and splits.val.counts() == {"blue": 5, "red": 5}
    assert set(splits.train.refs) | set(splits.val.refs) == files(tmp_path / "train")
    assert not set(splits.train.refs) & set(splits.val.refs)
    assert splits.train.refs == load_data(tmp_path, per_class=3, seed=5).train.refs  # the same subsample either way
    assert "val: the training images the 3/class subsample left unused" in splits.roles
    assert "test: the shipped val/ folder" in splits.roles


def test_val_as_test_without_spare_training_images_holds_out_val_fraction_of_train(tmp_path):
    make_folder(tmp_path / "train", classes=("red", "blue", "green"), n=8, seed=1)
    (tmp_path / "train" / "green" / "0.png").unlink()  # 7 green: none to spare with --per-class 7
    make_folder(tmp_path / "val", classes=("red", "blue", "green"), n=2, seed=2)
    everything = load_data(tmp_path, val_as_test=True, val_fraction=0.25)
    assert everything.val.counts() == {"blue": 2, "green": 2, "red": 2}  # 25% of 8, 8 and 7
    assert not set(everything.train.refs) & set(everything.val.refs)
    assert set(everything.test.refs) == files(tmp_path / "val")
    mixed = load_data(tmp_path, val_as_test=True, val_fraction=0.25, per_class=7)
    assert mixed.val.counts() == {"blue": 1, "green": 2, "red": 1}  # spare images, else 25% of green's 7
    assert mixed.train.counts() == {"blue": 7, "green": 5, "red": 7}
    assert "green: none to spare" in mixed.roles


def test_class_folders_carve_test_first_then_val_stratified_and_reproducibly(tmp_path):
    make_folder(tmp_path, classes=("red", "blue", "green"), n=10)
    a = load_data(tmp_path, test_fraction=0.2, val_fraction=0.25, seed=3)
    assert a.test.counts() == {"blue": 2, "green": 2, "red": 2}
    assert a.val.counts() == {"blue": 2, "green": 2, "red": 2} and a.train.counts() == {"blue": 6, "green": 6, "red": 6}
    roles = [set(a.train.refs), set(a.val.refs), set(a.test.refs)]
    assert set().union(*roles) == files(tmp_path) and sum(map(len, roles)) == 30  # disjoint, and nothing lost
    again, other = (load_data(tmp_path, test_fraction=0.2, val_fraction=0.25, seed=s) for s in (3, 4))
    assert again.test.refs == a.test.refs and again.val.refs == a.val.refs and other.test.refs != a.test.refs
    assert load_data(tmp_path).test is None  # test_fraction 0 (the default): no test


def test_csv_split_column_keeps_each_rows_role(tmp_path):
    make_folder(tmp_path / "imgs", n=4)
    splits_of = {0: "train", 1: "train", 2: "Validation", 3: "test"}
    rows = ["path,label,split"] + [f"imgs/{c}/{i}.png,{c},{splits_of[i]}" for c in ("red", "blue") for i in range(4)]
    (tmp_path / "labels.csv").write_text("\n".join(rows))
    splits = load_data(tmp_path / "labels.csv")
    assert [Path(r).name for r in splits.train.refs] == ["0.png", "1.png"] * 2
    assert [Path(r).name for r in splits.val.refs] == ["2.png"] * 2
    assert [Path(r).name for r in splits.test.refs] == ["3.png"] * 2
    assert splits.test.counts() == {"blue": 1, "red": 1} and "test: the CSV rows marked test" in splits.roles


def test_csv_without_split_column_is_split_like_class_folders(tmp_path):
    make_folder(tmp_path / "imgs", n=10)
    rows = ["path,label"] + [f"imgs/{c}/{i}.png,{c}" for c in ("blue", "red") for i in range(10)]  # folder order
    (tmp_path / "labels.csv").write_text("\n".join(rows))
    from_csv = load_data(tmp_path / "labels.csv", test_fraction=0.3, seed=2)
    from_folders = load_data(tmp_path / "imgs", test_fraction=0.3, seed=2)
    assert from_csv.test.counts() == {"blue": 3, "red": 3}
    assert from_csv.test.refs == from_folders.test.refs and from_csv.val.refs == from_folders.val.refs


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_fashion_mnist_t10k_is_test_and_val_comes_from_unused_training_images(tmp_path, monkeypatch):
    """A miniature of the real files (6 training and 2 t10k images per class), in the real format."""
    rng = np.random.default_rng(0)
    for prefix, per_class in (("train", 6), ("t10k", 2)):
        labels = np.repeat(np.arange(10), per_class)
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (len(labels), 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path)
    splits = load_data("fashion-mnist", classes=["t-shirt", "sneaker"], per_class=4)
    assert splits.train.counts() == {"t-shirt": 4, "sneaker": 4} and splits.val.counts() == {"t-shirt": 2, "sneaker": 2}
    assert splits.test.counts() == {"t-shirt": 2, "sneaker": 2}
    assert all(r.startswith("fashion-mnist:test:") for r in splits.test.refs)
    assert not set(splits.train.refs) & set(splits.val.refs)
    assert splits.test.read(splits.test.refs[0]).size == (28, 28)
    assert "test: the official t10k images" in splits.roles
    folds = kfold_splits("fashion-mnist", 2, classes=["t-shirt", "sneaker"])  # train and t10k pooled
    assert sorted(r for f in folds for r in f.test.refs) == sorted(r for r in splits.test.refs + [
        f"fashion-mnist:train:{i}" for i in range(60) if i // 6 in (0, 7)])


def test_val_per_class_caps_val_with_the_same_recipe_as_per_class(tmp_path):
    make_folder(tmp_path / "train", n=4, seed=1)
    make_folder(tmp_path / "val", n=6, seed=2)
    capped = load_data(tmp_path, val_per_class=2, seed=7)
    assert capped.val.counts() == {"blue": 2, "red": 2}
    assert capped.val.refs == subsample_per_class(load_data(tmp_path).val, 2, seed=7).refs
    assert capped.val.refs != load_data(tmp_path, val_per_class=2, seed=8).val.refs
    assert "val: at most 2/class of the shipped val/ folder" in capped.roles


def test_class_folders_are_split_stratified_and_reproducibly(tmp_path):
    make_folder(tmp_path, classes=("red", "blue", "green"), n=10)
    a = load_data(tmp_path, val_fraction=0.2, seed=3)
    b = load_data(tmp_path, val_fraction=0.2, seed=3)
    c = load_data(tmp_path, val_fraction=0.2, seed=4)
    assert a.val.counts() == {"blue": 2, "green": 2, "red": 2}
    assert a.val.refs == b.val.refs and a.val.refs != c.val.refs
    assert not set(a.train.refs) & set(a.val.refs)


def test_csv_rows_naming_missing_files_are_listed_by_line(tmp_path):
    make_folder(tmp_path / "imgs", classes=("red", "blue"), n=2)
    rows = ["path,label", "imgs/red/0.png,red", "imgs/red/gone.png,red", "imgs/blue/0.png,blue", "nowhere.jpg,blue"]
    (tmp_path / "labels.csv").write_text("\n".join(rows))
    with pytest.raises(HeadstartError) as error:
        load_data(tmp_path / "labels.csv")
    message = str(error.value)
    assert "2 listed files do not exist" in message and "line 3:" in message and "line 5:" in message
    assert "gone.png" in message and "nowhere.jpg" in message and "line 2:" not in message


def test_csv_source(tmp_path):
    make_folder(tmp_path / "imgs", n=5)
    rows = ["path,label"] + [f"imgs/{c}/{i}.png,{c}" for c in ("red", "blue") for i in range(5)]
    (tmp_path / "labels.csv").write_text("\n".join(rows))
    splits = load_data(tmp_path / "labels.csv", val_fraction=0.4)
    assert splits.classes == ["blue", "red"] and len(splits.val) == 4 and len(splits.train) == 6


def test_per_class_subsamples_train_only(tmp_path):
    make_folder(tmp_path / "train", n=8)
    make_folder(tmp_path / "val", n=4)
    splits = load_data(tmp_path, per_class=3, seed=0)
    assert splits.train.counts() == {"blue": 3, "red": 3} and len(splits.val) == 8
    assert load_data(tmp_path, per_class=3, seed=0).train.refs == splits.train.refs


def test_class_subset(tmp_path):
    make_folder(tmp_path / "train", classes=("red", "blue", "green"), n=3)
    make_folder(tmp_path / "val", classes=("red", "blue", "green"), n=2)
    splits = load_data(tmp_path, classes=["red", "green"])
    assert splits.classes == ["red", "green"] and set(splits.train.labels) == {0, 1} and len(splits.val) == 4


def test_non_image_files_are_skipped_and_named(image_folder):
    (image_folder / "train" / "red" / "imageNotFound.gif").write_bytes(b"GIF89a")
    (image_folder / "train" / "red" / "notes.txt").write_text("x")
    (image_folder / "train" / "blue" / ".DS_Store").write_bytes(b"\0")
    splits = load_data(image_folder)
    skipped = sorted(Path(p).name for p, _ in splits.skipped)
    assert skipped == [".DS_Store", "imageNotFound.gif", "notes.txt"]
    assert len(splits.train) == 12


def test_names_with_spaces_and_non_ascii(tmp_path):
    for cls in ("fleur de lys", "épée"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            draw((200, 10, 10), i).save(tmp_path / cls / f"ïmage {i} ✓.png")
    splits = load_data(tmp_path, val_fraction=0.34)
    assert splits.classes == ["fleur de lys", "épée"] and len(splits.train) + len(splits.val) == 6


@pytest.mark.parametrize("case, message", [
    ("missing", "not found"),
    ("no_images", "no images"),
    ("one_class", "only one class"),
    ("empty_class", "no training images for class blue"),
    ("val_unknown_class", "val has classes that train lacks: green"),
    ("not_csv", "not a .csv"),
    ("no_class_folders", "no class folders"),
])
def test_bad_input_is_refused_with_a_clear_message(tmp_path, case, message):
    root = tmp_path / "d"
    if case == "no_images":
        (root / "red").mkdir(parents=True)
        (root / "red" / "readme.txt").write_text("x")
        (root / "blue").mkdir()
    elif case == "one_class":
        make_folder(root, classes=("red",), n=4)
    elif case == "empty_class":
        make_folder(root / "train", classes=("red",), n=4)
        (root / "train" / "blue").mkdir()
        make_folder(root / "val", classes=("red",), n=2)
    elif case == "val_unknown_class":
        make_folder(root / "train", n=3)
        make_folder(root / "val", classes=("red", "green"), n=2)
    elif case == "not_csv":
        root.parent.mkdir(exist_ok=True)
        root = tmp_path / "d.txt"
        root.write_text("x")
    elif case == "no_class_folders":
        root.mkdir()
        draw((1, 2, 3), 0).save(root / "loose.png")
    with pytest.raises(HeadstartError, match=message):
        load_data(root)


def test_idx_reader_reads_the_mnist_format(tmp_path):
    """Fashion-MNIST ships as gzipped IDX files (Debian's dataset-fashion-mnist)."""
    pixels = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in pixels.shape)
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(header + pixels.tobytes()))
    assert np.array_equal(read_idx(path), pixels)


def test_fashion_mnist_builtin():
    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file():
        pytest.skip("dataset-fashion-mnist not installed")
    splits = load_data("fashion-mnist", classes=["t-shirt", "trouser", "sneaker"], per_class=5)
    assert splits.train.counts() == {"t-shirt": 5, "trouser": 5, "sneaker": 5}
    assert len(splits.test) == 3000 and splits.val.counts() == {"t-shirt": 5995, "trouser": 5995, "sneaker": 5995}
    img = splits.train.read(splits.train.refs[0])
    assert img.mode == "RGB" and img.size == (28, 28)


def test_k_folds_test_every_image_exactly_once_and_select_on_none_of_it(tmp_path):
    make_folder(tmp_path / "train", classes=("red", "blue", "green"), n=6, seed=1)
    make_folder(tmp_path / "val", classes=("red", "blue", "green"), n=3, seed=2)
    folds = kfold_splits(tmp_path, 3, seed=1, val_fraction=0.25, per_class=3)
    tested = [r for fold in folds for r in fold.test.refs]
    assert sorted(tested) == sorted(files(tmp_path))  # train/ and val/ pooled; each image tested exactly once
    for fold in folds:
        assert fold.test.counts() == {"blue": 3, "green": 3, "red": 3}  # stratified: 9 per class / 3 folds
        assert fold.train.counts() == {"blue": 3, "green": 3, "red": 3}  # per_class subsamples the inner train
        assert fold.val.counts() == {"blue": 2, "green": 2, "red": 2}  # 25% of the other folds' 6 per class
        assert not set(fold.val.refs) & set(fold.test.refs) and not set(fold.train.refs) & set(fold.test.refs)
        assert not set(fold.val.refs) & set(fold.train.refs)
    assert [f.test.refs for f in folds] == [f.test.refs for f in kfold_splits(tmp_path, 3, seed=1)]
    assert [f.test.refs for f in folds] != [f.test.refs for f in kfold_splits(tmp_path, 3, seed=2)]
    assert folds[1].roles.endswith("test: fold 2 of 3 (stratified, seed 1) of all 27 labelled images")


def test_role_fingerprints_follow_content_not_counts_or_names(tmp_path):
    make_folder(tmp_path / "a" / "train", n=4, seed=1)
    make_folder(tmp_path / "a" / "val", n=2, seed=2)
    make_folder(tmp_path / "b" / "train", n=4, seed=1)
    make_folder(tmp_path / "b" / "val", n=2, seed=3)  # same counts, other images
    shutil.copytree(tmp_path / "a", tmp_path / "renamed")
    for path in (tmp_path / "renamed").rglob("*.png"):
        path.rename(path.with_name(f"x{path.name}"))
    a, b, renamed = (role_fingerprints(load_data(tmp_path / name)) for name in ("a", "b", "renamed"))
    assert set(a) == {"train", "val"}  # no test role, no test fingerprint
    assert a["train"] == b["train"] and a["val"] != b["val"]
    assert a == renamed
    (tmp_path / "renamed" / "val" / "red" / "x0.png").rename(tmp_path / "renamed" / "val" / "blue" / "x9.png")
    assert role_fingerprints(load_data(tmp_path / "renamed"))["val"] != a["val"]  # same pixels, another label


def test_each_file_is_hashed_once_however_many_folds_and_roles_hold_it_until_it_changes(tmp_path, monkeypatch):
    make_folder(tmp_path / "train", n=4)
    make_folder(tmp_path / "val", n=2, seed=1)
    hashed = []
    real = data.content_hash
    monkeypatch.setattr(data, "content_hash", lambda ref: hashed.append(ref) or real(ref))
    folds = kfold_splits(tmp_path, 2, val_fraction=0.25)  # every file is in both folds, in one role or another
    first = [role_fingerprints(fold) for fold in folds]
    assert sorted(hashed) == sorted(files(tmp_path))  # 12 files, each read once
    assert [role_fingerprints(fold) for fold in folds] == first and len(hashed) == 12
    assert [folds[0].train.fingerprint(i) for i in range(len(folds[0].train))] == folds[0].train.fingerprints()
    edited = folds[0].test.refs[0]
    draw((0, 0, 0), 99).save(edited)
    after = [role_fingerprints(fold) for fold in folds]
    assert after[0]["test"] != first[0]["test"] and after[1] != first[1] and len(hashed) == 13
    assert hashed[-1] == edited


@pytest.mark.parametrize("case, kwargs, message", [
    ("uneven", {"test_fraction": 0.1}, (r"--test-fraction 0.1 leaves class blue with no test image \(4 images\): "
                                        r"use --test-fraction 0.13 or more, or add images to that class")),
    ("test_unknown_class", {}, (r"test has classes that train lacks: green \(add training images or remove them "
                                r"from test/\)")),
    ("empty_test", {}, "no test images in .*: add some to its test split, or remove it"),
    ("bad_split", {}, r"labels.csv: split must be train, val \(or valid, validation\) or test \(line 3: 'tset'\)"),
    ("test_fraction_on_split", {"test_fraction": 0.2}, "ships its own split .*drop --test-fraction"),
    ("val_as_test_with_test", {"val_as_test": True}, "ships its own test split: drop --val-as-test"),
    ("val_as_test_unsplit", {"val_as_test": True}, "ships no val split to use as test"),
])
def test_bad_role_input_is_refused_with_one_line_that_says_what_to_fix(tmp_path, case, kwargs, message):
    root = tmp_path / "d"
    if case == "uneven":
        make_folder(root, classes=("red",), n=10)
        make_folder(root, classes=("blue",), n=4)
    elif case in ("test_unknown_class", "empty_test", "val_as_test_with_test"):
        make_folder(root / "train", n=3)
        make_folder(root / "val", n=2)
        make_folder(root / "test", classes=("red", "green") if case == "test_unknown_class" else ("red",), n=2)
        if case == "empty_test":
            shutil.rmtree(root / "test" / "red")
            (root / "test" / "red").mkdir()
    elif case == "bad_split":
        make_folder(root, n=2)
        (root / "labels.csv").write_text("path,label,split\nred/0.png,red,train\nred/1.png,red,tset\n"
                                         "blue/0.png,blue,train\nblue/1.png,blue,val\n")
        root = root / "labels.csv"
    elif case == "test_fraction_on_split":
        make_folder(root / "train", n=3)
        make_folder(root / "val", n=2)
    elif case == "val_as_test_unsplit":
        make_folder(root, n=3)
    with pytest.raises(HeadstartError, match=message) as error:
        load_data(root, **kwargs)
    assert "\n" not in str(error.value)


def test_check_splits_refuses_a_test_set_with_classes_train_lacks(image_folder):
    splits = load_data(image_folder)
    alien = ImageSet(["green", "red"], splits.val.refs[:2], [0, 1])
    with pytest.raises(HeadstartError, match=r"^test has classes that train lacks: green \(add training images"):
        check_splits(replace(splits, test=alien))
    check_splits(replace(splits, test=alien.subset([1])))  # red only: fine


def test_more_folds_than_the_smallest_class_has_images_is_refused(tmp_path):
    make_folder(tmp_path, classes=("red",), n=6)
    make_folder(tmp_path, classes=("blue",), n=3)
    with pytest.raises(HeadstartError, match="^--folds 5 needs at least 5 images of every class; blue has 3: "
                                             "use fewer folds, or add images$"):
        kfold_splits(tmp_path, 5)
    assert len(kfold_splits(tmp_path, 3)) == 3


def test_cifar_val_as_test_with_500_per_class():
    """The real case the roles exist for: CIFAR's official test images (shipped as val/) are only reported on;
    the model is selected on training images the 500/class subsample never uses."""
    root = needs_shared("cifar10-cat-dog-horse")
    splits = load_data(root, val_as_test=True, per_class=500, seed=0)
    assert splits.train.counts() == {"cat": 500, "dog": 500, "horse": 500}
    assert splits.test.counts() == {"cat": 1000, "dog": 1000, "horse": 1000}
    assert set(splits.test.refs) == {str(p) for p in (root / "val").rglob("*.jpg")}
    shipped_train = {str(p) for p in (root / "train").rglob("*.jpg")}
    assert set(splits.val.refs) == shipped_train - set(splits.train.refs)  # exactly the unused 4500/class
    assert splits.val.counts() == {"cat": 4500, "dog": 4500, "horse": 4500}
