"""The recommender's rules react to the measurements, and the CLI gives strategy, reasons, hyperparameters."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from headstart.analysis.recommend import (CellRule, decide, hyperparameters, pick_label, runner_up, shipped_rule, split_label,
                                          track_record)
from headstart.strategies import STRATEGIES

STAGES = ["stem", "stage1", "stage2", "stage3", "stage4", "stage5", "stage6", "stage7"]


def measured(n=120, acc=0.9, low=0.99, high=0.97, best="stage7", classes=2):
    by_stage = {s: acc * (0.6 + 0.05 * i) for i, s in enumerate(STAGES)}
    by_stage[best] = max(by_stage[best], acc)
    return {"classes": classes, "images_per_class": n, "smallest_class": n, "imbalance_ratio": 1.0,
            "probe_accuracy": acc, "probe_accuracy_by_stage": by_stage, "best_stage": best, "chance": 1 / classes,
            "low_level_similarity": low, "high_level_similarity": high, "image_size": 224, "stages": STAGES}


# A rule as the benchmark fits one: size × probe accuracy, a pick and a record per cell.
RECORD = {"tasks": ["a-10", "b-10"], "best_or_tied": {"partial:1": 2, "linear": 1},
          "mean_regret": {"partial:1": 0.0, "linear": 3.5, "full": 6.0, "scratch": 30.0},
          "ranking": ["partial:1", "linear", "full", "scratch"]}
RULE = CellRule(40, "probe_accuracy", 0.8, {"small data, features fit": "partial:1", "small data, features poor": "gradual",
                                            "large data, features fit": "lp-ft", "large data, features poor": "full"},
                {"small data, features fit": RECORD})


@pytest.mark.parametrize("m, expected", [
    (measured(n=10, acc=0.9), ("partial", 1)),  # small, the features fit
    (measured(n=10, acc=0.7), ("gradual", None)),  # small, poor features
    (measured(n=150, acc=0.88), ("lp-ft", None)),
    (measured(n=500, acc=0.6, low=0.8, high=0.86), ("full", None)),
    (measured(n=5000, acc=0.6, low=0.6, high=0.7), ("scratch", None)),  # beyond the benchmark: the hand-written rule
])
def test_the_pick_is_the_cell_rules_for_the_measured_cell(m, expected):
    strategy, train_last, reasons = decide(m, RULE)
    assert (strategy, train_last) == expected
    assert reasons and all(isinstance(r, str) and r for r in reasons)
    assert any(f"{m['probe_accuracy']:.0%}" in r for r in reasons)  # the reasons quote the measurements
    assert any(f"{m['images_per_class']:.0f}" in r for r in reasons)


def test_the_reasons_quote_the_cells_track_record_on_the_benchmark():
    _, _, reasons = decide(measured(n=10, acc=0.9), RULE)
    assert any("features fit" in r and "0.80" in r for r in reasons)  # which side of which cut
    assert any("2 tasks in this cell" in r and "mean regret 0.0" in r and "linear, 3.5" in r for r in reasons)
    _, _, reasons = decide(measured(n=100, acc=0.6), RULE)
    assert any("no task in this cell" in r for r in reasons)  # no record is claimed where there is none


def test_imbalanced_classes_are_named_with_the_ratio_and_what_training_does_about_them():
    balanced = decide(measured(n=10, acc=0.9), RULE)[2]
    assert not any("imbalanced" in r for r in balanced)
    skewed = measured(n=10, acc=0.9) | {"imbalance_ratio": 4.0, "smallest_class": 3}
    said = [r for r in decide(skewed, RULE)[2] if "imbalanced" in r]
    assert len(said) == 1 and "4.0×" in said[0] and "which has 3" in said[0] and "balanced accuracy" in said[0]


def test_the_runner_up_is_the_cells_second_best():
    assert runner_up(RULE, measured(n=10, acc=0.9), "partial") == "linear"
    assert runner_up(RULE, measured(n=100, acc=0.6), "full") == "lp-ft"  # no record: the pick's usual rival


def test_the_shipped_rule_and_its_record_agree_with_the_benchmarks_docs():
    record = track_record()
    rule = shipped_rule()
    assert set(rule.picks) == set(rule.cells())
    assert all(split_label(label)[0] in STRATEGIES for label in rule.picks.values())
    docs = (Path(__file__).parents[1] / "docs" / "recommend.md").read_text()
    assert f"{record['tasks']} tasks from {len(record['datasets'])} datasets" in docs
    ours = record["policies"][record["recommend_policy"]]
    assert f"| {record['recommend_policy']} | {ours['mean_regret']:.2f} | {ours['worst_regret']:.1f} |" in docs


def test_with_the_shipped_rule_the_reasons_name_the_fixed_policy_that_lost_less_if_there_is_one():
    record = track_record()
    ours = record["policies"][record["recommend_policy"]]
    fixed = {name.removeprefix("always "): p for name, p in record["policies"].items() if name.startswith("always ")}
    best = min(fixed, key=lambda s: (fixed[s]["mean_regret"], fixed[s]["relative_seconds"]))
    said = []
    cases = (measured(n=10, acc=0.9), measured(n=10, acc=0.5), measured(n=300, acc=0.9), measured(n=300, acc=0.6))
    for i, m in enumerate(cases):
        strategy, train_last, reasons = decide(m, shipped_rule() if i % 2 else None)  # the shipped rule, either way
        alternative = [r for r in reasons if "if training time does not matter" in r]
        expected = fixed[best]["mean_regret"] < ours["mean_regret"] and pick_label(strategy, train_last) != best
        assert len(alternative) == expected
        if expected:
            assert f"lost {ours['mean_regret']:.2f}" in alternative[0] and alternative[0].endswith(f"train {best}")
        said += alternative
    assert said or fixed[best]["mean_regret"] >= ours["mean_regret"] or set(shipped_rule().picks.values()) == {best}
    assert not any("if training time" in r for r in decide(measured(n=10, acc=0.9), RULE)[2])  # not for a rule under test


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
    strategy, train_last, _ = decide(rec["measurements"])  # the shipped rule's pick for what was measured
    assert (rec["strategy"], rec["hyperparameters"]["train_last"]) == (strategy, train_last)
    v = rec["verify"]
    assert set(v["results"]) == {pick_label(strategy, train_last), rec["runner_up"]}
    assert all(0 <= r["test_low"] <= r["test"] <= r["test_high"] <= 1 for r in v["results"].values())
    assert v["epochs"] == 1 and v["held"] == (pick_label(strategy, train_last) in v["tied"])
    assert "test images nothing was selected on" in v["evidence"]  # compare's protocol, not best-epoch val
    summary = json.loads((tmp_path / "runs" / "summary.json").read_text())
    assert summary["setup"]["n_test"] == 8  # the data ships no test/: its val/ (4 per class) is the test set
    assert (tmp_path / "runs" / "report.html").is_file()


def test_without_batchnorm_the_reasons_say_similarity_was_not_measured_instead_of_quoting_a_figure():
    """ViTs and ConvNeXts have no BatchNorm statistics to compare with: recommend must not pass 1.00 off as a
    measurement, nor unfreeze only one group as if the data were known to look like ImageNet."""
    m = measured(n=150, acc=0.88, low=None, high=None)
    by_similarity = CellRule(40, "high_level_similarity", 0.9, {"small data, similar to ImageNet": "linear",
                                                                 "small data, different from ImageNet": "partial",
                                                                 "large data, similar to ImageNet": "lp-ft",
                                                                 "large data, different from ImageNet": "full"})
    strategy, train_last, reasons = decide(m, by_similarity)
    assert strategy == "lp-ft"  # unmeasured similarity is never taken for "different"
    assert not any("1.00" in r for r in reasons)
    assert any("no BatchNorm" in r for r in reasons)
