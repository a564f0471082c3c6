"""`check` finds planted problems and stays silent on clean data."""

import json
import shutil

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from headstart.analysis.check import check_data, dhash


def blobs(seed: int, size: int = 48) -> Image.Image:
    """A smooth random picture: distinct per seed, and a JPEG re-encode keeps its structure."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)


def make_clean(root, classes=("ants", "bees"), n_train=12, n_val=4):
    seed = 0
    for split, n in (("train", n_train), ("val", n_val)):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                seed += 1
                blobs(seed).save(root / split / c / f"{i}.png")
    return root


def kinds(report):
    return {p.kind: p for p in report.problems}


def test_clean_data_passes_silently(tmp_path):
    report = check_data(make_clean(tmp_path))
    assert report.problems == []
    assert report.ok
    assert report.counts == {"train": {"ants": 12, "bees": 12}, "val": {"ants": 4, "bees": 4}}
    assert report.imbalance_ratio == 1.0
    assert report.images["modes"] == {"RGB": 32}


def test_planted_problems_are_found(tmp_path):
    root = make_clean(tmp_path)
    shutil.copy(root / "train/ants/3.png", root / "val/ants/leak.png")  # leakage across splits
    (root / "train/bees/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")  # corrupt file
    (root / "train/wasps").mkdir()  # empty class
    (root / "val/wasps").mkdir()
    report = check_data(root)
    found = kinds(report)
    assert not report.ok
    assert {"duplicate-leakage", "unreadable", "empty-class"} <= set(found)
    assert str(root / "val/ants/leak.png") in found["duplicate-leakage"].files
    assert found["unreadable"].files == [str(root / "train/bees/broken.jpg")]
    assert "wasps" in found["empty-class"].message
    assert all(p.fix for p in report.problems)  # every problem comes with a fix


def test_fast_check_finds_leakage_without_decoding(tmp_path):
    root = make_clean(tmp_path)
    shutil.copy(root / "train/bees/0.png", root / "val/bees/copy.png")
    report = check_data(root, deep=False)
    assert set(kinds(report)) == {"duplicate-leakage"}
    assert report.images == {}


def test_near_duplicates_and_label_conflicts(tmp_path):
    root = make_clean(tmp_path)
    # the same picture, resized and re-encoded as JPEG, in val: not byte-identical, still a leak
    Image.open(root / "train/ants/0.png").resize((40, 40)).save(root / "val/ants/near.jpg", quality=85)
    shutil.copy(root / "train/ants/1.png", root / "train/bees/mislabelled.png")
    found = kinds(check_data(root))
    assert str(root / "val/ants/near.jpg") in found["near-duplicate-leakage"].files
    assert "duplicate-label-conflict" in found


def test_imbalance_tiny_class_and_greyscale(tmp_path):
    root = make_clean(tmp_path, classes=("a",), n_train=40)
    (root / "train/b").mkdir()
    (root / "val/b").mkdir()
    for i in range(4):
        blobs(1000 + i).convert("L").save(root / "train/b" / f"{i}.png")
    blobs(2000).save(root / "val/b/0.png")
    report = check_data(root)
    found = kinds(report)
    assert report.imbalance_ratio == 10.0
    assert {"imbalance", "tiny-class", "greyscale"} <= set(found)
    assert report.ok  # warnings, no errors


def test_dhash_is_stable_under_resize_and_differs_between_images():
    a = blobs(1, 64)
    same = dhash(a.resize((50, 50)))[0] ^ dhash(a)[0]
    other = dhash(blobs(2, 64))[0] ^ dhash(a)[0]
    assert bin(same).count("1") <= 4 < bin(other).count("1")
    assert dhash(Image.new("RGB", (32, 32), (120, 120, 120)))[1]  # flat: flagged blank


def test_cli_check_json(tmp_path):
    from headstart.cli import app

    root = make_clean(tmp_path)
    shutil.copy(root / "train/ants/0.png", root / "val/bees/x.png")
    result = CliRunner().invoke(app, ["check", str(root), "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert report["problems"][0]["kind"] == "duplicate-label-conflict"
    clean = CliRunner().invoke(app, ["check", str(make_clean(tmp_path / "clean"))])
    assert clean.exit_code == 0
    assert "no problems found" in clean.output


def test_preflight_is_the_fast_check(tmp_path):
    from headstart.analysis.check import preflight
    from headstart.data import load_data

    root = make_clean(tmp_path)
    shutil.copy(root / "train/ants/0.png", root / "val/ants/x.png")
    problems = preflight(load_data(root))
    assert [p.kind for p in problems] == ["duplicate-leakage"]
    assert preflight(load_data(make_clean(tmp_path / "clean"))) == []


def test_popcount_fallback_matches_numpy():
    from headstart.analysis.check import popcount

    x = np.array([[0, 1, 3], [2**64 - 1, 2**63, 255]], dtype=np.uint64)
    expected = [[0, 1, 2], [64, 1, 8]]
    assert popcount(x).tolist() == expected
    assert np.unpackbits(x[..., None].view(np.uint8), axis=-1).sum(-1).tolist() == expected  # the numpy<2 path
