"""Evidence you can trust: a reported figure comes from images nothing was selected on, carries its interval,
and a run never scores its own training images silently.

train = fit, val = select (best epoch, early stopping), test = report (once, with the best weights).
"""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from headstart.api import evaluate, predict, train
from headstart.cli import app
from headstart.compare import compare
from headstart.errors import HeadstartError
from headstart.report.html import write_run_report
from headstart.runs import read_history, run_dir

from conftest import draw, make_folder
from helpers import TINY, one_step_config

runner = CliRunner()


def tiny_config(**kw):
    return one_step_config(**{"image_size": 32, "batch_size": 8, **kw})


@pytest.fixture
def three_roles(tmp_path):
    """train/, val/ and test/ folders of two colour classes (6, 4 and 5 images each)."""
    make_folder(tmp_path / "data" / "train", n=6, seed=1)
    make_folder(tmp_path / "data" / "val", n=4, seed=2)
    make_folder(tmp_path / "data" / "test", n=5, seed=3)
    return tmp_path / "data"


# ------------------------------------------------------------------------------------------ one run
def test_the_best_weights_score_the_test_split_once_and_apart(three_roles, tmp_path):
    run = train(three_roles, tiny_config(epochs=2, strategy="full"), tmp_path / "run")
    assert run["n_test"] == 10 and run["test_metric"] == "accuracy" and run["no_test"] is None
    with open(tmp_path / "run" / "test_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["image"] for r in rows) == sorted(f"test/{c}/{i}.png" for c in ("blue", "red") for i in range(5))
    assert run["test_accuracy"] == pytest.approx(np.mean([r["true"] == r["predicted"] for r in rows]))
    low, high = run["test_interval"]["low"], run["test_interval"]["high"]
    assert low <= run["test_accuracy"] <= high and high - low > 0.1  # ten images: a wide interval, said so
    history = read_history(tmp_path / "run" / "history.csv")
    assert run["val_accuracy_best"] == max(r["val_accuracy"] for r in history)  # the selection figure, named so
    assert run["best_val_accuracy"] == run["val_accuracy_best"]  # (deprecated alias)
    scored = evaluate(tmp_path / "run", three_roles)  # test/ first: the reported figure, reproduced
    assert scored["accuracy"] == pytest.approx(run["test_accuracy"]) and scored["seen"] == {"train": 0, "val": 0,
                                                                                           "unseen": 10}
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert set(config["fingerprints"]) == {"train", "val", "test"} and "test: the shipped test/ folder" in config["roles"]
    html = (tmp_path / "run" / "report.html").read_text()
    assert "test accuracy" in html and "nothing was selected on" in html and "selection figure" in html


def test_a_run_without_a_test_split_trains_and_says_it_has_no_test_figure(image_folder, tmp_path):
    run = train(image_folder, tiny_config(), tmp_path / "run")
    assert run["test_accuracy"] is None and run["test_metric"] is None
    assert "no test figure" in run["no_test"] and "--test-fraction" in run["no_test"] and "--val-as-test" in run["no_test"]
    assert not (tmp_path / "run" / "test_predictions.csv").exists()
    assert "no test figure" in (tmp_path / "run" / "report.html").read_text()


def test_an_old_run_directory_still_opens_and_says_what_it_lacks(image_folder, tmp_path):
    """A run recorded before test figures and seen-image hashes: evaluate, predict and the report still work."""
    out = tmp_path / "run"
    train(image_folder, tiny_config(), out)
    old = {k: v for k, v in json.loads((out / "run.json").read_text()).items()
           if not k.startswith(("test_", "val_accuracy_best", "val_balanced", "selected_on", "no_test", "n_test"))}
    (out / "run.json").write_text(json.dumps(old))
    (out / "seen_images.json").unlink()
    scored = evaluate(out, image_folder)
    assert scored["seen"] is None and "predates" in scored["seen_note"]
    assert predict(out, [image_folder / "val" / "red" / "0.png"])[0]["label"] in ("red", "blue")
    html = write_run_report(out).read_text()
    assert "recorded before headstart kept test figures" in html and "no test figure" in html


# ------------------------------------------------------------------------------- evaluate: seen images
def test_evaluate_refuses_the_runs_training_images_unless_allowed(image_folder, tmp_path):
    out = tmp_path / "run"
    train(image_folder, tiny_config(), out)
    with pytest.raises(HeadstartError, match="12 of 12 images .* this run trained on.*--allow-seen"):
        evaluate(out, image_folder / "train")
    allowed = evaluate(out, image_folder / "train", allow_seen=True)
    assert allowed["seen"] == {"train": 12, "val": 0, "unseen": 0} and "optimistic" in allowed["seen_note"]
    val = evaluate(out, image_folder)  # its val/: scored, with the warning that the best epoch was chosen there
    assert val["seen"] == {"train": 0, "val": 8, "unseen": 0} and "best epoch was chosen" in val["seen_note"]
    # a folder without val/ that holds training images (copied under other names) is not scored silently
    mixed = tmp_path / "mixed"
    shutil.copytree(image_folder / "train", mixed)
    for name in ("red", "blue"):
        draw((90, 90, 90), 7).save(mixed / name / "new.png")
    with pytest.raises(HeadstartError, match="12 of 14 images"):
        evaluate(out, mixed)
    refused = runner.invoke(app, ["evaluate", str(out), str(image_folder / "train")])
    assert refused.exit_code == 2 and "--allow-seen" in refused.output and "Traceback" not in refused.output
    assert len([line for line in refused.output.splitlines() if line.strip()]) <= 3  # one line (wrapped at most)
    ok = runner.invoke(app, ["evaluate", str(out), str(image_folder / "train"), "--allow-seen", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout[ok.stdout.index("{"):])["seen"]["train"] == 12


# ----------------------------------------------------------------------------------------- bad input
def test_bad_role_input_is_one_line_and_exit_2(tmp_path):
    small = make_folder(tmp_path / "unsplit", n=6)
    result = runner.invoke(app, ["train", str(small), "--model", TINY, "--test-fraction", "0.05", "--out",
                                 str(tmp_path / "r1")])
    assert result.exit_code == 2 and "leaves class" in result.output and "--test-fraction 0.09" in result.output
    shipped = tmp_path / "shipped"
    make_folder(shipped / "train", n=4)
    make_folder(shipped / "val", n=2)
    make_folder(shipped / "test", classes=("red", "green"), n=2)
    result = runner.invoke(app, ["train", str(shipped), "--model", TINY, "--out", str(tmp_path / "r2")])
    assert result.exit_code == 2 and "test has classes that train lacks: green" in result.output
    result = runner.invoke(app, ["compare", str(small), "--model", TINY, "--folds", "7", "--strategies", "linear",
                                 "--seeds", "0", "--out", str(tmp_path / "c")])
    assert result.exit_code == 2 and "--folds 7 needs at least 7 images of every class" in result.output
    for result in (result,):
        assert "Traceback" not in result.output


# -------------------------------------------------------------------------- random labels: chance is chance
@pytest.fixture
def random_labels(tmp_path):
    """Noise images of random colours with labels that have nothing to do with them: train 20, val 6, test 40
    per class, in a CSV with a split column."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "noise"
    folder.mkdir()
    rows = []
    for split, n in (("train", 40), ("val", 12), ("test", 80)):
        for i in range(n):
            path = folder / f"{split}{i}.png"
            draw(tuple(int(c) for c in rng.integers(0, 256, 3)), int(rng.integers(1 << 30))).save(path)
            rows.append((path.name, "ab"[i % 2], split))
    with (folder / "labels.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "split"), *rows])
    return folder / "labels.csv"


def test_random_labels_look_above_chance_on_val_and_are_reported_as_chance(random_labels, tmp_path):
    """The best of 8 epochs on 12 val images beats chance by luck alone; the test figure, on 80 images nothing
    was selected on, does not, and the verdict says that no strategy beats chance."""
    out = tmp_path / "cmp"
    cfg = tiny_config(epochs=8, lr=0.05, head_lr=0.05, cache_dir=str(tmp_path / "c"))  # large steps: val swings
    summary = compare(random_labels, ["linear", "scratch"], [0], out, cfg)
    for name in ("linear", "scratch"):
        row = summary["strategies"][name]
        history = read_history(run_dir(out, name, 0) / "history.csv")
        assert row["val_accuracy_best_mean"] > 0.5  # selection: the luckiest epoch on the images that chose it
        assert row["val_accuracy_best_mean"] > np.mean([r["val_accuracy"] for r in history])
        assert row["test"]["low"] < 0.5 < row["test"]["high"] and row["test"]["images"] == 80
    assert summary["verdict"]["above_chance"] == [] and summary["winner"] is None and summary["recommended"] is None
    assert summary["sentence"].startswith("no strategy beats chance")
    assert "No strategy beats chance" in (out / "report.md").read_text()
    assert "no strategy beats chance" in (out / "report.html").read_text()
