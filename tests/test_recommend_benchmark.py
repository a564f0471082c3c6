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
            "recommend": {"label": "linear", "measurements": measured(n, probe)}}


def measured(n: int, probe: float, high: float = 0.97) -> dict:
    """What recommend measures, as its JSON keeps it (the fields `decide` reads)."""
    return {"images_per_class": n, "probe_accuracy": probe, "high_level_similarity": high, "low_level_similarity": 0.99,
            "stages": ["stem", "stage1"], "best_stage": "stage1", "probe_accuracy_by_stage": {"stem": 0.5, "stage1": probe},
            "chance": 0.5}


def test_regret_is_zero_inside_the_tied_set_and_the_gap_in_points_outside_it():
    r = record("a", 10, 0.9, {"full": 0.80, "linear": 0.79, "scratch": 0.60}, tied=["linear"])
    assert bench.regret(r, "full") == 0
    assert bench.regret(r, "linear") == 0  # 1 point behind, but the test images cannot tell them apart
    assert bench.regret(r, "scratch") == pytest.approx(20.0)


def test_the_cell_rule_learns_a_size_threshold_from_the_fitting_tasks():
    # small tasks: linear is best; large ones: full is best by 10 points
    records = [record(d, n, 0.9, {"linear": 0.9, "full": 0.8} if n < 50 else {"full": 0.9, "linear": 0.8}, [])
               for d in ("a", "b") for n in (10, 20, 200, 400)]
    rule = bench.fit_cell_rule(records)
    assert rule.pick(measured(10, 0.9)) == "linear"
    assert rule.pick(measured(300, 0.9)) == "full"
    assert 20 < rule.size_threshold < 200  # a cut between the sizes it saw, not at one of them
    assert sum(bench.regret(r, rule.pick(r["recommend"]["measurements"])) for r in records) == 0
    large = rule.record[rule.cell(measured(300, 0.9))]
    assert large["best_or_tied"]["full"] == 4 and large["mean_regret"]["linear"] == pytest.approx(10.0)


def test_the_fit_may_cut_on_the_probe_instead_of_the_size():
    # the features decide here: where the probe is poor, full wins; where it fits, linear does, at any size
    records = [record(d, n, p, {"linear": 0.9, "full": 0.8} if p > 0.8 else {"full": 0.9, "linear": 0.8}, [])
               for d in ("a", "b") for n in (10, 300) for p in (0.6, 0.95)]
    rule = bench.fit_cell_rule(records)
    assert rule.measure == "probe_accuracy" and 0.6 < rule.threshold < 0.95
    assert rule.pick(measured(30, 0.5)) == "full" and rule.pick(measured(30, 0.99)) == "linear"


def test_leave_one_dataset_out_never_fits_on_the_scored_dataset():
    # dataset "odd" is the only one where lp-ft wins on large data: fitted without it, the rule cannot know that
    common = {"full": 0.9, "lp-ft": 0.8}
    records = [record(d, 300, 0.9, common, []) for d in ("a", "b", "c")]
    records.append(record("odd", 300, 0.9, {"lp-ft": 0.9, "full": 0.8}, []))
    picks = bench.leave_one_dataset_out(records)
    assert picks["odd-300"] == "full"  # what the other datasets taught, and a 10-point regret here
    assert picks["a-300"] == "full"
    table = bench.policy_table(records)
    assert table[bench.RECOMMEND]["regret"]["odd-300"] == pytest.approx(10.0)
    assert table["oracle"]["mean_regret"] == 0


def test_the_decision_table_puts_each_task_in_its_cell_of_the_two_by_two():
    records = [record("a", 10, 0.9, {"linear": 0.9}, []), record("b", 400, 0.9, {"full": 0.9}, ["lp-ft"])]
    records[1]["recommend"]["measurements"]["high_level_similarity"] = 0.5
    cells = bench.decision_table(records)
    assert cells["small data, similar to ImageNet"]["best"] == {"linear": 1}
    assert cells["large data, different to ImageNet"]["in_tied_set"] == {"full": 1, "lp-ft": 1}
    assert cells["large data, different to ImageNet"]["least_regret"] == ["lp-ft", "full"]  # a tie, cheapest first


def test_the_docs_say_in_words_which_fixed_policy_recommend_does_not_beat():
    # gradual is best everywhere; the rule fitted without "odd" sends odd's large task to linear and loses there
    records = [record(d, n, 0.9, {"gradual": 0.9, "linear": 0.9 if n < 50 else 0.8}, [])
               for d in ("a", "b", "c") for n in (10, 300)]
    records.append(record("odd", 20, 0.9, {"gradual": 0.9, "linear": 0.7}, []))
    table = bench.policy_table(records)
    for row in table.values():
        row["relative_seconds"] = None
    words = " ".join(bench.verdict(records, table, "always gradual"))
    assert "does not beat **always gradual** (0.00; best or tied with the best on 7 of 7 tasks)" in words
    assert "Its largest loss: odd-20, 20.0 points (picked linear with the rule fitted without odd)" in words
    assert "always linear" in words.split("It does not beat")[0]  # beaten: listed before the caveat
