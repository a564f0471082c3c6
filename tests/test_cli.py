"""The command line: thin over the library, one clear line on bad input, JSON for programs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from headstart.cli import app

from conftest import draw, make_folder

runner = CliRunner()


def run_cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_train_json_then_predict_and_evaluate(image_folder, tmp_path):
    out = tmp_path / "run"
    result = run_cli("train", image_folder, "--model", "test_efficientnet", "--strategy", "linear",
                     "--epochs", "2", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout)
    assert run["strategy"] == "linear" and run["classes"] == ["blue", "red"] and run["epochs"] == 2

    (tmp_path / "new").mkdir()
    draw((220, 40, 40), 99).save(tmp_path / "new" / "a red one.png")
    (tmp_path / "new" / "broken.jpg").write_bytes(b"\xff\xd8 nope")
    predicted = run_cli("predict", out, tmp_path / "new", "--top-k", "2", "--json", "--csv", tmp_path / "p.csv")
    assert predicted.exit_code == 0, predicted.output
    rows = json.loads(predicted.stdout)
    assert [r["path"].rsplit("/", 1)[1] for r in rows] == ["a red one.png", "broken.jpg"]
    assert len(rows[0]["top_k"]) == 2 and abs(sum(t["probability"] for t in rows[0]["top_k"]) - 1) < 1e-4
    assert "error" in rows[1]
    assert (tmp_path / "p.csv").read_text().count("\n") == 3

    evaluated = run_cli("evaluate", out, image_folder, "--json")
    assert evaluated.exit_code == 0, evaluated.output
    metrics = json.loads(evaluated.stdout)
    assert metrics["n"] == 8 and set(metrics["per_class"]) == {"blue", "red"}
    assert (out / "confusion_eval.png").is_file()


def test_inspect_json_shows_what_trains():
    result = run_cli("inspect", "efficientnet_lite0", "--strategy", "partial", "--num-classes", "3", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    trainable = [g["group"] for g in info["groups"] if g["trainable"]]
    assert trainable == ["stage6", "stage7", "head"] and "out_features=3" in info["head"]  # the last 2 groups
    bn = {g["group"]: g["batchnorm"] for g in info["groups"]}
    assert bn["stem"].startswith("eval") and bn["stage7"].startswith("eval")  # pretrained statistics everywhere
    with_train_bn = json.loads(run_cli("inspect", "efficientnet_lite0", "--strategy", "partial", "--train-bn",
                                       "--num-classes", "3", "--json").stdout)
    bn = {g["group"]: g["batchnorm"] for g in with_train_bn["groups"]}
    assert bn["stem"].startswith("eval") and bn["stage7"] == "train"


def test_inspect_with_random_weights_shows_the_plan_of_a_model_whose_weights_are_not_here():
    import timm

    result = run_cli("--offline", "inspect", "resnet18", "--weights", "random", "--strategy", "partial",
                     "--train-last", "1", "--num-classes", "3", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["weights"] == "random"
    net = timm.create_model("resnet18", pretrained=False, num_classes=3)
    by_hand = sum(p.numel() for m in (net.layer4, net.fc) for p in m.parameters())  # freeze all but layer4 + head
    assert info["trainable_params"] == by_hand


@pytest.mark.parametrize("setup, message", [
    ("missing", "data not found"),
    ("one_class", "only one class"),
    ("bad_strategy", "unknown strategy"),
    ("bad_model", "unknown model"),
    ("ghost_bn_without_batchnorm_training", "--ghost-bn applies where BatchNorm trains"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, setup, message):
    data = tmp_path / "data"
    args = ["train", data, "--model", "test_efficientnet", "--epochs", "1", "--out", tmp_path / "run"]
    if setup == "one_class":
        make_folder(data, classes=("red",), n=3)
    elif setup in ("bad_strategy", "bad_model", "ghost_bn_without_batchnorm_training"):
        make_folder(data / "train", n=2)
        make_folder(data / "val", n=2)
        args += {"bad_strategy": ["--strategy", "nope"], "bad_model": ["--model", "nope_net"],
                 "ghost_bn_without_batchnorm_training": ["--strategy", "partial", "--ghost-bn", "8"]}[setup]
    result = run_cli(*args)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_unreadable_training_files_are_named_and_skipped(image_folder, tmp_path):
    (image_folder / "train" / "red" / "zero.png").write_bytes(b"")
    (image_folder / "train" / "blue" / "half.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (image_folder / "train" / "blue" / "imageNotFound.gif").write_bytes(b"GIF89a")
    result = run_cli("train", image_folder, "--model", "test_efficientnet", "--epochs", "1", "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for name in ("zero.png", "half.jpg", "imageNotFound.gif"):
        assert name in text
    assert "skipped 2 unreadable train files" in text and "skipped 1 non-image files" in text


def test_console_script_exits_cleanly_on_missing_data(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "headstart.cli", "train", str(tmp_path / "nowhere")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "data not found" in proc.stderr
