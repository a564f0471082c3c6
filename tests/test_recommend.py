"""The recommender's rules react to the measurements, and the CLI gives strategy, reasons, hyperparameters."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from headstart.analysis.recommend import decide, hyperparameters

STAGES = ["stem", "stage1", "stage2", "stage3", "stage4", "stage5", "stage6", "stage7"]


def measured(n=120, acc=0.9, low=0.99, high=0.97, best="stage7", classes=2):
    by_stage = {s: acc * (0.6 + 0.05 * i) for i, s in enumerate(STAGES)}
    by_stage[best] = max(by_stage[best], acc)
    return {"classes": classes, "images_per_class": n, "smallest_class": n, "imbalance_ratio": 1.0,
            "probe_accuracy": acc, "probe_accuracy_by_stage": by_stage, "best_stage": best, "chance": 1 / classes,
            "low_level_similarity": low, "high_level_similarity": high, "image_size": 224, "stages": STAGES}


@pytest.mark.parametrize("m, expected", [
    (measured(n=120, acc=0.97), "linear"),  # hymenoptera-like: the features already fit
    (measured(n=10, acc=0.7), "linear"),  # too few images for anything else
    (measured(n=150, acc=0.88), "partial"),  # similar domain, some headroom, small data
    (measured(n=500, acc=0.88, low=0.91, high=0.92), "lp-ft"),  # mild low-level shift, enough data
    (measured(n=500, acc=0.85, low=0.8, high=0.86), "full"),  # far low-level statistics (greyscale, medical)
    (measured(n=150, acc=0.7, low=0.97, high=0.9), "gradual"),  # content shift, poor features, small data
    (measured(n=5000, acc=0.6, low=0.6, high=0.7), "scratch"),  # far at every depth, lots of data
])
def test_the_pick_follows_the_measurements(m, expected):
    strategy, train_last, reasons = decide(m)
    assert strategy == expected
    assert reasons and all(isinstance(r, str) and r for r in reasons)
    assert any(f"{m['probe_accuracy']:.0%}" in r for r in reasons)  # the reasons quote the measurements


def test_partial_unfreezes_more_when_the_content_differs():
    assert decide(measured(n=150, acc=0.88))[1] == 1
    assert decide(measured(n=150, acc=0.88, high=0.9))[1] == 2


def test_hyperparameters_follow_the_pick():
    hp = hyperparameters("linear", None, measured(), "efficientnet_lite0")
    assert hp["augment"] == "none" and list(hp["group_lrs"]) == ["head"]
    hp = hyperparameters("partial", 2, measured(n=50), "efficientnet_lite0")
    assert set(hp["group_lrs"]) == {"stage6", "stage7", "head"} and hp["augment"] == "strong"
    near = hyperparameters("full", None, measured(low=0.99), "m")
    far = hyperparameters("full", None, measured(low=0.8), "m")
    assert far["lr_decay"] > near["lr_decay"]  # a low-level shift: early layers get relatively more LR
    assert far["group_lrs"]["stem"] / far["group_lrs"]["stage7"] > near["group_lrs"]["stem"] / near["group_lrs"]["stage7"]


def test_the_command_reproduces_the_data_selection():
    from headstart.analysis.recommend import command

    hp = hyperparameters("partial", 2, measured(), "efficientnet_lite0")
    cmd = command("fashion-mnist", hp, 100, ["coat", "shirt"])
    assert "--strategy partial --model efficientnet_lite0 --train-last 2" in cmd
    assert cmd.endswith("--per-class 100 --classes coat,shirt")


def coloured(root, n_train=10, n_val=4):
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for c, channel in (("red", 0), ("blue", 2)):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 120, (36, 36, 3), dtype=np.uint8)
                img[..., channel] += 120
                Image.fromarray(img).save(root / split / c / f"{i}.png")
    return root


def test_cli_recommend_json_and_verify(tmp_path):
    from headstart.cli import app

    data = coloured(tmp_path / "data")
    result = CliRunner().invoke(app, ["recommend", str(data), "--model", "test_efficientnet", "--image-size", "32",
                                      "--verify", "--verify-epochs", "1", "--out", str(tmp_path / "runs"), "--json"])
    assert result.exit_code == 0, result.output
    rec = json.loads(result.stdout)
    assert {"strategy", "reasons", "hyperparameters"} <= set(rec)
    assert rec["strategy"] == "linear"  # 10 images per class: too few to fine-tune
    v = rec["verify"]
    assert set(v["results"]) == {"linear", "partial"}
    assert all(0 <= r["val_accuracy_best"] <= 1 and r["epochs"] == 1 for r in v["results"].values())
    assert isinstance(v["held"], bool)
    assert (tmp_path / "runs" / "partial" / "run.json").is_file()


def test_without_batchnorm_the_reasons_say_similarity_was_not_measured_instead_of_quoting_a_figure():
    """ViTs and ConvNeXts have no BatchNorm statistics to compare with: recommend must not pass 1.00 off as a
    measurement, nor unfreeze only one group as if the data were known to look like ImageNet."""
    m = measured(n=150, acc=0.88, low=None, high=None)
    strategy, train_last, reasons = decide(m)
    assert strategy == "partial" and train_last == 2
    assert not any("1.00" in r for r in reasons)
    assert any("no BatchNorm" in r for r in reasons)
