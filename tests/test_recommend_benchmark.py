"""The recommend benchmark's scoring (bench/recommend.py): regret, the fixed policies and the leave-one-dataset-out
fit, on hand-made task records (the benchmark's runs themselves are hours of training: bench/, not tests)."""

import importlib.util
import sys
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("bench_recommend", Path(__file__).parents[1] / "bench" / "recommend.py")
bench = importlib.util.module_from_spec(SPEC)
sys.modules[SPEC.name] = bench  # dataclasses look their module up there
SPEC.loader.exec_module(bench)


def record(dataset: str, n: int, probe: float, test: dict[str, float], tied: list[str]) -> dict:
    """A task record as `run_task` writes it; strategies missing from `test` scored 0.5."""
    scores = {s: test.get(s, 0.5) for s in bench.STRATEGIES}
    best = max(scores, key=scores.get)
    return {"task": f"{dataset}-{n}", "dataset": dataset, "test": scores, "best": best, "tied": [best, *tied],
            "winner": None if tied else best,
            "recommend": {"label": "linear", "measurements": {"images_per_class": n, "probe_accuracy": probe,
                                                              "high_level_similarity": 0.97}}}


def test_regret_is_zero_inside_the_tied_set_and_the_gap_in_points_outside_it():
    r = record("a", 10, 0.9, {"full": 0.80, "linear": 0.79, "scratch": 0.60}, tied=["linear"])
    assert bench.regret(r, "full") == 0
    assert bench.regret(r, "linear") == 0  # 1 point behind, but the test images cannot tell them apart
    assert bench.regret(r, "scratch") == pytest.approx(20.0)


def test_the_compare_label_of_recommends_pick():
    assert bench.pick_label("partial", 2) == "partial"
    assert bench.pick_label("partial", 1) == "partial:1"
    assert bench.pick_label("lp-ft", None) == "lp-ft"


def test_the_cell_rule_learns_a_size_threshold_from_the_fitting_tasks():
    # small tasks: linear is best; large ones: full is best by 10 points
    records = [record(d, n, 0.9, {"linear": 0.9, "full": 0.8} if n < 50 else {"full": 0.9, "linear": 0.8}, [])
               for d in ("a", "b") for n in (10, 20, 200, 400)]
    rule = bench.fit_cell_rule(records)
    assert rule({"images_per_class": 10, "probe_accuracy": 0.9}) == "linear"
    assert rule({"images_per_class": 300, "probe_accuracy": 0.9}) == "full"
    assert sum(bench.regret(r, rule(r["recommend"]["measurements"])) for r in records) == 0


def test_leave_one_dataset_out_never_fits_on_the_scored_dataset():
    # dataset "odd" is the only one where lp-ft wins on large data: fitted without it, the rule cannot know that
    common = {"full": 0.9, "lp-ft": 0.8}
    records = [record(d, 300, 0.9, common, []) for d in ("a", "b", "c")]
    records.append(record("odd", 300, 0.9, {"lp-ft": 0.9, "full": 0.8}, []))
    picks = bench.leave_one_dataset_out(records)
    assert picks["odd-300"] == "full"  # what the other datasets taught, and a 10-point regret here
    assert picks["a-300"] == "full"
    table = bench.policy_table(records)
    assert table["cell rule, leave-one-dataset-out"]["regret"]["odd-300"] == pytest.approx(10.0)
    assert table["oracle"]["mean_regret"] == 0


def test_the_decision_table_puts_each_task_in_its_cell_of_the_two_by_two():
    records = [record("a", 10, 0.9, {"linear": 0.9}, []), record("b", 400, 0.9, {"full": 0.9}, ["lp-ft"])]
    records[1]["recommend"]["measurements"]["high_level_similarity"] = 0.5
    cells = bench.decision_table(records)
    assert cells["small data, similar to ImageNet"]["best"] == {"linear": 1}
    assert cells["large data, different to ImageNet"]["in_tied_set"] == {"full": 1, "lp-ft": 1}
