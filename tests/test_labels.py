"""Label issues (`check --labels`): deliberately swapped labels are found, from the cached frozen features."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from headstart import features
from headstart.analysis.labels import find_label_issues, out_of_fold_probabilities, ranked_issues
from headstart.api import find_label_issues as find_label_issues_api
from headstart.cli import app
from headstart.data import load_data

from conftest import make_folder
from helpers import TINY, tiny_model

TINY_OPTIONS = ["--model", TINY, "--image-size", "32"]


@pytest.fixture(autouse=True)
def seeded():
    """The tiny test model has no pretrained weights: loaded by name it starts from random ones, seeded here."""
    torch.manual_seed(0)


def swapped_csv(root: Path, n: int = 10, swap: tuple[str, ...] = ("red/0.png", "blue/1.png")) -> tuple[Path, set[str]]:
    """Red and blue noise images (n per class) as a CSV whose `swap` files carry the other colour's label."""
    make_folder(root / "train", n=n, seed=1)
    make_folder(root / "val", n=3, seed=2)
    rows = []
    for split in ("train", "val"):
        for path in sorted((root / split).glob("*/*.png")):
            label = path.parent.name
            if split == "train" and f"{label}/{path.name}" in swap:
                label = {"red": "blue", "blue": "red"}[label]
            rows.append((str(path), label, split))
    with (root / "labels.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "split"), *rows])
    return root / "labels.csv", {str(root / "train" / s) for s in swap}


def test_out_of_fold_probabilities_expose_swapped_labels_in_separable_features():
    """Two clusters, three labels of each swapped: cleanlab reports those six, and they rank first."""
    rng = np.random.default_rng(0)
    truth = np.repeat([0, 1], 40)
    x = rng.normal(0, 1, (80, 16)) + truth[:, None] * 4.0
    given = truth.copy()
    swapped = [0, 5, 10, 40, 45, 50]
    given[swapped] = 1 - given[swapped]
    probabilities, c, losses = out_of_fold_probabilities(x, given, folds=5)
    assert probabilities.shape == (80, 2) and np.allclose(probabilities.sum(1), 1)
    assert c in losses and losses[c] == min(losses.values())
    found = ranked_issues(given, probabilities)
    assert set(found[:6]) == set(swapped) and len(found) <= 8


def test_clean_labels_give_no_issues():
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1, 2], 20)
    x = rng.normal(0, 1, (60, 8)) + np.eye(3, 8)[labels] * 6.0
    probabilities, _, _ = out_of_fold_probabilities(x, labels, folds=4)
    assert len(ranked_issues(labels, probabilities)) == 0


def test_finder_flags_the_swapped_images_of_a_tiny_dataset(tmp_path):
    data, swapped = swapped_csv(tmp_path)
    report = find_label_issues_api(data, model=TINY, image_size=32, folds=5)
    flagged = {i.path for i in report.issues}
    assert swapped <= flagged and len(flagged) <= len(swapped) + 2
    by_path = {i.path: i for i in report.issues}
    for path in swapped:
        issue = by_path[path]
        colour = Path(path).parent.name
        assert issue.suspected == colour and issue.given != colour  # it names the true colour
        assert issue.confidence > 0.5 and issue.given_probability < 0.5
    assert report.n_images == 20 and report.folds == 5 and report.image_size == 32


def test_features_come_from_the_feature_cache_once(tmp_path, monkeypatch):
    """The second search (other folds, same images) reads the cached pooled features: no second forward pass."""
    data, _ = swapped_csv(tmp_path)
    computed = []
    real = features._compute
    monkeypatch.setattr(features, "_compute", lambda *a, **k: computed.append(1) or real(*a, **k))
    train, model = load_data(data).train, tiny_model()
    first = find_label_issues(train, model, image_size=32, folds=5)
    second = find_label_issues(train, model, image_size=32, folds=3)
    assert len(computed) == 1 and first.n_images == second.n_images == 20


def test_cli_check_labels_lists_them_and_draws_the_grid(tmp_path):
    data, swapped = swapped_csv(tmp_path / "data")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["check", str(data), "--labels", *TINY_OPTIONS, "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output  # suspects are a warning, not an error
    report = json.loads(result.stdout)
    assert swapped <= {i["path"] for i in report["label_issues"]["issues"]}
    problem = next(p for p in report["problems"] if p["kind"] == "label-issues")
    assert problem["severity"] == "warning" and swapped <= set(problem["files"])
    assert json.loads((out / "check.json").read_text())["label_issues"] == report["label_issues"]
    assert (out / "label-issues.png").stat().st_size > 5000


def test_cli_check_labels_prints_a_table(tmp_path):
    """Rows name each suspect by its path under the folder they share, with its given and suspected label."""
    data, _ = swapped_csv(tmp_path / "data")
    result = CliRunner().invoke(app, ["check", str(data), "--labels", *TINY_OPTIONS])
    assert result.exit_code == 0, result.output
    assert "likely label errors" in result.output and "add --out DIR" in result.output
    rows = [line for line in result.output.splitlines() if ".png" in line]
    assert any("red/0.png" in r and r.index("blue") < r.index("red", r.index("0.png")) for r in rows), result.output
    assert any("blue/1.png" in r and r.index("red") < r.index("blue", r.index("1.png")) for r in rows), result.output


@pytest.mark.parametrize("folds", ["5", "1"])
def test_cli_labels_refuses_a_class_smaller_than_the_folds_in_one_line(tmp_path, folds):
    make_folder(tmp_path / "data" / "train", n=6, seed=1)
    make_folder(tmp_path / "data" / "val", n=2, seed=2)
    for extra in range(3, 6):  # red keeps 3 training images
        (tmp_path / "data" / "train" / "red" / f"{extra}.png").unlink()
    result = CliRunner().invoke(app, ["check", str(tmp_path / "data"), "--labels", "--folds", folds, *TINY_OPTIONS])
    assert result.exit_code == 2, result.output
    assert "--folds" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
