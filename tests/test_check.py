"""`check` finds planted problems and stays silent on clean data."""

import json
import shutil

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from headstart.analysis.check import (IMBALANCE_HANDLING, check_data, class_imbalance, dhash, grey_thumbnail,
                                      near_duplicate_pairs, thumbnail_correlation)


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


def test_a_file_in_a_format_headstart_does_not_decode_is_unreadable_with_the_reason(tmp_path):
    root = make_clean(tmp_path)
    blobs(99).save(root / "train/ants/scan.png", format="EPS")  # PostScript: rendered by Ghostscript, never by us
    found = kinds(check_data(root))
    assert found["unreadable"].files == [str(root / "train/ants/scan.png")]
    assert "not a JPEG, PNG" in found["unreadable"].message


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
    assert found["imbalance"].severity == "warning"  # 10:1: train's pre-flight prints it too
    assert IMBALANCE_HANDLING in found["imbalance"].fix and "more 'b' images" in found["imbalance"].fix
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


# ------------------------------------------------------------------------------------------- near duplicates
def noisy_chain(seed: int = 108) -> tuple[Image.Image, Image.Image, Image.Image]:
    """A, B, C on a line: B is A plus fine noise, C is A plus twice that noise. Each step keeps the picture
    (same dHash, thumbnails correlate > 0.9), but A and C are two steps apart and correlate < 0.8."""
    base = np.asarray(blobs(seed, 64), dtype=np.float32)
    noise = np.random.default_rng(seed).standard_normal((64, 64, 1)) * base.mean(2).std() * 0.45
    return tuple(Image.fromarray(np.clip(base + k * noise, 0, 255).round().astype(np.uint8)) for k in (0, 1, 2))


def similarity(x: Image.Image, y: Image.Image) -> tuple[int, float]:
    """(dHash bits apart, thumbnail correlation): the two numbers check's near-duplicate test reads."""
    return bin(dhash(x)[0] ^ dhash(y)[0]).count("1"), thumbnail_correlation(grey_thumbnail(x), grey_thumbnail(y))


def test_a_chain_of_near_duplicates_is_not_one_group(tmp_path):
    """The report from the field: a near-duplicate label conflict whose example showed two images of the same
    class. A~B (both blowhole) and B~C (crack) chained A, B and C into one mixed group shown by A and B."""
    a, b, c = noisy_chain()
    assert similarity(a, b)[1] > 0.9 and similarity(b, c)[1] > 0.9 and similarity(a, c)[1] < 0.8  # the premise
    root = make_clean(tmp_path, classes=("blowhole", "crack"))
    a.save(root / "train/blowhole/a.png")
    b.save(root / "train/blowhole/b.png")
    c.save(root / "train/crack/c.png")
    found = kinds(check_data(root))
    conflict = found["near-duplicate-label-conflict"]
    assert sorted(conflict.files) == [str(root / "train/blowhole/b.png"), str(root / "train/crack/c.png")]
    assert f"blowhole ({root / 'train/blowhole/b.png'}) vs crack ({root / 'train/crack/c.png'})" in conflict.message
    assert conflict.message.startswith("1 pair of near-identical images (2 images)")
    repeat = found["near-duplicate"]  # A~B stays reported, as what it is: one class's near copies
    assert sorted(repeat.files) == [str(root / "train/blowhole/a.png"), str(root / "train/blowhole/b.png")]


def test_a_real_near_duplicate_under_two_labels_is_a_conflict_shown_by_both_labels(tmp_path):
    root = make_clean(tmp_path)
    Image.open(root / "train/ants/5.png").resize((40, 40)).save(root / "train/bees/relabelled.jpg", quality=85)
    conflict = kinds(check_data(root))["near-duplicate-label-conflict"]
    assert sorted(conflict.files) == [str(root / "train/ants/5.png"), str(root / "train/bees/relabelled.jpg")]
    assert f"ants ({root / 'train/ants/5.png'}) vs bees ({root / 'train/bees/relabelled.jpg'})" in conflict.message


def test_identical_copies_under_two_labels_are_shown_by_two_labels(tmp_path):
    root = make_clean(tmp_path)
    shutil.copy(root / "train/ants/1.png", root / "train/ants/1b.png")  # the group is ants, ants, bees
    shutil.copy(root / "train/ants/1.png", root / "train/bees/x.png")
    conflict = kinds(check_data(root))["duplicate-label-conflict"]
    assert f"ants ({root / 'train/ants/1.png'}) vs bees ({root / 'train/bees/x.png'})" in conflict.message


def test_near_duplicate_pairs_are_measured_pairs_closest_first():
    hashes = np.array([0b0, 0b1111, 0b1111_1111, 0b1110], dtype=np.uint64)  # 0~1 (4 bits), 1~2 (4), 0..2: 8 apart
    usable = np.array([True, True, True, True])
    assert near_duplicate_pairs(hashes, usable, 4) == [(1, 3, 1), (0, 3, 3), (0, 1, 4), (1, 2, 4)]
    assert near_duplicate_pairs(hashes, np.array([True, True, True, False]), 4) == [(0, 1, 4), (1, 2, 4)]
    unconfirmed = near_duplicate_pairs(hashes, usable, 4, confirm=lambda i, j: 2 not in (i, j))
    assert unconfirmed == [(1, 3, 1), (0, 3, 3), (0, 1, 4)]


def test_a_fine_texture_is_not_blank_but_a_flat_image_is(tmp_path):
    root = make_clean(tmp_path)
    stripes = np.zeros((128, 144), dtype=np.uint8)
    stripes[:, np.arange(144) % 8 < 4] = 255  # 8-px stripes: every 16-px cell of the 9x8 hash averages to grey
    assert dhash(Image.fromarray(stripes))[1]  # too flat for the hash ...
    Image.fromarray(stripes).save(root / "train/ants/stripes.png")
    Image.new("RGB", (64, 64), (128, 128, 128)).save(root / "train/bees/flat.png")
    assert kinds(check_data(root))["blank"].files == [str(root / "train/bees/flat.png")]  # ... but not blank


# ------------------------------------------------------------------------------------------- imbalance
def make_counts(root, counts: dict[str, int], n_val: int = 4):
    """Class folders with `counts[c]` training images each, all distinct pictures."""
    seed = 5000
    for c, n in counts.items():
        for split, k in (("train", n), ("val", n_val)):
            (root / split / c).mkdir(parents=True)
            for i in range(k):
                seed += 1
                blobs(seed).save(root / split / c / f"{i}.png")
    return root


def test_moderate_imbalance_is_reported_with_its_numbers_and_what_headstart_does(tmp_path):
    from headstart.analysis.check import preflight
    from headstart.data import load_data

    root = make_counts(tmp_path, {"big": 24, "mid": 16, "small": 12})
    report = check_data(root)
    assert report.imbalance == {"ratio": 2.0, "largest": "big", "smallest": "small",
                                "counts": {"big": 24, "mid": 16, "small": 12}, "handling": IMBALANCE_HANDLING}
    problem = kinds(report)["imbalance"]
    assert problem.severity == "info"  # headstart handles it: `train` does not nag
    assert "2.0:1" in problem.message and "big (24)" in problem.message and "small (12)" in problem.message
    assert "big 24, mid 16, small 12" in problem.message
    assert "balanced accuracy" in problem.fix and "--balance" in problem.fix
    assert preflight(load_data(root)) == []


def test_balanced_classes_are_not_flagged(tmp_path):
    report = check_data(make_counts(tmp_path, {"a": 12, "b": 12, "c": 11}))
    assert report.imbalance is None and "imbalance" not in kinds(report)


def test_imbalance_fires_above_one_and_a_half_times_the_smallest_class():
    assert class_imbalance({"a": 15, "b": 10}) is None  # exactly 1.5: not more than
    assert class_imbalance({"a": 16, "b": 10})["ratio"] == 1.6
    assert class_imbalance({"a": 16, "b": 10, "empty": 0})["smallest"] == "b"  # an empty class is its own error
    assert class_imbalance({"a": 30}) is None


def test_cli_check_shows_the_imbalance_in_text_and_json(tmp_path):
    from headstart.cli import app

    root = make_counts(tmp_path, {"ants": 20, "bees": 10})
    text = CliRunner().invoke(app, ["check", str(root)])
    assert text.exit_code == 0, text.output
    flat = " ".join(text.output.split())  # rich wraps long lines
    assert "imbalanced 2.0:1, largest ants (20) to smallest bees (10)" in flat
    assert " ".join(IMBALANCE_HANDLING.split()) in flat
    report = json.loads(CliRunner().invoke(app, ["check", str(root), "--json"]).stdout)
    assert report["imbalance"]["ratio"] == 2.0
    assert report["imbalance"]["counts"] == {"ants": 20, "bees": 10}
    assert (report["imbalance"]["largest"], report["imbalance"]["smallest"]) == ("ants", "bees")


def test_cli_check_looks_at_the_same_selection_as_train_per_class_and_classes(tmp_path):
    from headstart.cli import app

    root = make_counts(tmp_path, {"ants": 20, "bees": 10})
    report = json.loads(CliRunner().invoke(app, ["check", str(root), "--json", "--per-class", "10"]).stdout)
    assert report["imbalance"] is None and report["counts"]["train"] == {"ants": 10, "bees": 10}
    only = json.loads(CliRunner().invoke(app, ["check", str(root), "--json", "--classes", "bees"]).stdout)
    assert list(only["counts"]["train"]) == ["bees"]
