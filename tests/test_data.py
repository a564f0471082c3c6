"""Finding, checking, splitting and subsampling labelled images; every bad input gets a clear message."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from headstart.data import load_data, read_idx
from headstart.errors import HeadstartError

from conftest import draw, make_folder


def test_train_val_folders_keep_their_split(image_folder):
    splits = load_data(image_folder)
    assert splits.classes == ["blue", "red"]
    assert len(splits.train) == 12 and len(splits.val) == 8
    assert splits.train.counts() == {"blue": 6, "red": 6}


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
    assert len(splits.val) == 3000
    img = splits.train.read(splits.train.refs[0])
    assert img.mode == "RGB" and img.size == (28, 28)
