"""compare: every strategy × seed on one split, summary.json from the runs' own records, resumable."""

from __future__ import annotations

import csv
import json
import statistics

import pytest

import headstart.compare as compare_mod
import headstart.train as train_mod
from headstart.compare import compare
from headstart.runs import run_dir
from headstart.errors import HeadstartError
from headstart.train import TrainConfig
from tiny_images import make_dataset

STRATEGIES, SEEDS = ["scratch", "linear", "partial"], [0, 1]


def tiny_config(**kw) -> TrainConfig:
    settings = dict(model="test_efficientnet", epochs=2, image_size=32, batch_size=8, patience=None, num_workers=0)
    return TrainConfig(**{**settings, **kw})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    summary = compare(data, STRATEGIES, SEEDS, out, tiny_config(cache_dir=str(out / "cache")), command="test")
    return out, summary


def history(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_summary_equals_statistics_recomputed_from_histories(finished):
    out, summary = finished
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["winner"] == summary["winner"] and set(on_disk["strategies"]) == set(STRATEGIES)
    for name in STRATEGIES:
        rows = [history(run_dir(out, name, s) / "history.csv") for s in SEEDS]
        runs = [json.loads((run_dir(out, name, s) / "run.json").read_text()) for s in SEEDS]
        best_val = [max(float(r["val_accuracy"]) for r in h) for h in rows]
        final_train = [float(h[-1]["train_accuracy"]) for h in rows]
        gap = [float(h[-1]["train_accuracy"]) - float(h[-1]["val_accuracy"]) for h in rows]
        got = on_disk["strategies"][name]
        for key, values in (("val_accuracy", best_val), ("final_train_accuracy", final_train), ("gap", gap),
                            ("wall_seconds", [r["train_seconds"] for r in runs]),
                            ("trainable_params", [r["trainable_params_max"] for r in runs])):
            assert got[f"{key}_mean"] == pytest.approx(statistics.mean(values), abs=1e-9), (name, key)
            assert got[f"{key}_std"] == pytest.approx(statistics.stdev(values), abs=1e-9), (name, key)
    means = {n: on_disk["strategies"][n]["val_accuracy_mean"] for n in STRATEGIES}
    assert on_disk["winner"] == max(means, key=means.get)
    ranked = sorted(means.values(), reverse=True)
    assert on_disk["margin"] == pytest.approx(ranked[0] - ranked[1])


def test_controlled_settings_are_the_same_for_every_strategy(finished):
    out, summary = finished
    configs = {n: json.loads((run_dir(out, n, 0) / "config.json").read_text())["train"] for n in STRATEGIES}
    assert {c["augment"] for c in configs.values()} == {"light"}  # one augmentation for all, linear included
    assert {c["epochs"] for c in configs.values()} == {2} and {c["patience"] for c in configs.values()} == {None}
    assert configs["linear"]["views"] > 0 and configs["partial"]["views"] > 0  # cached augmented views
    assert all(configs[n]["views"] == 0 for n in STRATEGIES if n not in ("linear", "partial"))
    splits = {json.loads((run_dir(out, n, s) / "run.json").read_text())["n_train"] for n in STRATEGIES for s in SEEDS}
    assert splits == {16}  # the same training images in every run
    assert summary["setup"]["seeds"] == SEEDS and summary["setup"]["command"] == "test"


def test_reports_have_one_row_per_strategy(finished):
    out, summary = finished
    md = (out / "report.md").read_text()
    table_rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| strategy")]
    assert len(table_rows) == len(STRATEGIES)
    assert summary["winner"] in md.split("\n\n")[1]  # the winner is named in the first paragraph
    html = (out / "report.html").read_text()
    assert html.count('data-strategy="') == len(STRATEGIES)
    assert "src=\"file:" not in html and "http://" not in html.replace("http://www.w3.org/2000/svg", "")  # self-contained


def test_interrupted_compare_finishes_only_the_missing_runs(data, tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    cfg = tiny_config(cache_dir=str(tmp_path / "cache"))
    real_epoch, calls = train_mod.train_one_epoch, {"n": 0}

    def ctrl_c_in_third_run(*args, **kwargs):  # 2 epochs per run: call 6 is the 3rd run's 2nd epoch
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_one_epoch", ctrl_c_in_third_run)
    with pytest.raises(KeyboardInterrupt):
        compare(data, STRATEGIES, SEEDS, out, cfg, report=False)
    monkeypatch.setattr(train_mod, "train_one_epoch", real_epoch)
    third = run_dir(out, "partial", 0)  # runs go seed by seed: scratch, linear, partial with seed 0 first
    assert json.loads((third / "run.json").read_text())["interrupted"] is True  # kept, marked, to be redone
    assert not run_dir(out, "scratch", 1).exists()
    done = {d: (d / "run.json").stat().st_mtime_ns for d in (run_dir(out, "scratch", 0), run_dir(out, "linear", 0))}

    real_train, trained = compare_mod.train_run, []

    def record(splits, cfg, directory, **kw):
        trained.append((cfg.strategy, cfg.seed))
        return real_train(splits, cfg, directory, **kw)

    monkeypatch.setattr(compare_mod, "train_run", record)
    summary = compare(data, STRATEGIES, SEEDS, out, cfg, report=False)
    assert trained == [("partial", 0), ("scratch", 1), ("linear", 1), ("partial", 1)]
    assert {d: (d / "run.json").stat().st_mtime_ns for d in done} == done  # finished runs untouched
    assert json.loads((third / "run.json").read_text())["interrupted"] is False
    assert set(summary["strategies"]) == set(STRATEGIES)
    trained.clear()
    compare(data, STRATEGIES, SEEDS, out, cfg, report=False)
    assert trained == []  # everything finished: nothing is redone


def test_a_finished_run_with_other_settings_is_refused(finished, data):
    out, _ = finished
    with pytest.raises(HeadstartError, match="other settings.*epochs"):
        compare(data, ["scratch"], [0], out, tiny_config(epochs=3, cache_dir=str(out / "cache")))


@pytest.mark.parametrize("other_data", [dict(per_class=4), dict(val_per_class=2)])
def test_a_finished_run_on_other_data_is_refused(finished, data, other_data):
    """Same training settings, other images (a subsample, a smaller val set): not the same experiment."""
    out, _ = finished
    with pytest.raises(HeadstartError, match="other settings.*(per_class|val_files)"):
        compare(data, ["linear"], [0], out, tiny_config(cache_dir=str(out / "cache")), **other_data)


def test_a_finished_run_on_the_same_data_named_another_way_is_reused(finished, data, monkeypatch):
    out, _ = finished
    monkeypatch.chdir(data.parent)
    trained = []
    monkeypatch.setattr(compare_mod, "train_run", lambda *a, **k: trained.append(a))
    compare(data.name, ["linear"], [0], out, tiny_config(cache_dir=str(out / "cache")), report=False)
    assert trained == []  # a relative path to the same folder is the same data


def test_bad_arguments_fail_before_training(data, tmp_path):
    with pytest.raises(HeadstartError, match="unknown strategy"):
        compare(data, ["linear", "frozen"], [0], tmp_path)
    with pytest.raises(HeadstartError, match="repeat"):
        compare(data, ["linear", "linear"], [0], tmp_path)


def test_partial_depths_compare_side_by_side(data, tmp_path):
    labels = ["partial:1", "partial:3"]
    summary = compare(data, labels, [0], tmp_path / "cmp", tiny_config(epochs=1, cache_dir=str(tmp_path / "cache")))
    assert set(summary["strategies"]) == set(labels)
    configs = {k: json.loads((run_dir(tmp_path / "cmp", f"partial:{k}", 0) / "config.json").read_text()) for k in (1, 3)}
    assert run_dir(tmp_path / "cmp", "partial:3", 0).name == "partial-k3-seed0"
    assert [configs[k]["train"]["train_last"] for k in (1, 3)] == [1, 3]
    assert [configs[k]["strategy"]["phases"] for k in (1, 3)] == [[{"start_epoch": 0, "train_last": 1}],
                                                                 [{"start_epoch": 0, "train_last": 3}]]
    rows = summary["strategies"]
    assert rows["partial:3"]["trainable_params_mean"] > rows["partial:1"]["trainable_params_mean"]
    assert rows["partial:1"]["trains"] == "the last 1 stage group and the head"
    html = (tmp_path / "cmp" / "report.html").read_text()
    assert 'data-strategy="partial:1"' in html and 'data-strategy="partial:3"' in html
    assert ">partial:3</text>" in html  # the frozen/trainable diagram names the variant


def test_bad_strategy_labels_fail_before_training(data, tmp_path):
    with pytest.raises(HeadstartError, match="partial:K with K"):
        compare(data, ["partial:0"], [0], tmp_path)
    with pytest.raises(HeadstartError, match="partial strategy only"):
        compare(data, ["linear:2"], [0], tmp_path)
    assert not (tmp_path / "runs").exists()


def test_cli_compare_reuses_the_finished_runs(finished, data, monkeypatch):
    from typer.testing import CliRunner

    from headstart.cli import app

    out, summary = finished
    real_train, trained = compare_mod.train_run, []
    monkeypatch.setattr(compare_mod, "train_run", lambda *a, **k: trained.append(a) or real_train(*a, **k))
    result = CliRunner().invoke(app, [
        "compare", str(data), "--model", "test_efficientnet", "--strategies", ",".join(STRATEGIES), "--seeds",
        ",".join(map(str, SEEDS)), "--epochs", "2", "--image-size", "32", "--batch-size", "8",
        "--cache-dir", str(out / "cache"), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert trained == []  # same settings as the library call: every run is reused
    printed = json.loads(result.stdout[result.stdout.index("{"):])
    assert printed["winner"] == summary["winner"]
    assert printed["strategies"]["linear"]["val_accuracy_mean"] == summary["strategies"]["linear"]["val_accuracy_mean"]


def test_a_finished_run_whose_strategy_defaults_changed_is_refused(finished, data, monkeypatch):
    """A strategy default edited in the code since the run (here partial's head LR) is another experiment."""
    from dataclasses import replace

    from headstart import strategies

    out, _ = finished
    monkeypatch.setitem(strategies.STRATEGIES, "partial", replace(strategies.STRATEGIES["partial"], head_lr=0.5))
    with pytest.raises(HeadstartError, match="other settings.*strategy spec.*head_lr"):
        compare(data, ["partial"], [0], out, tiny_config(cache_dir=str(out / "cache")))


def test_a_comparison_folder_stands_for_its_winners_best_run(finished, data, tmp_path):
    from typer.testing import CliRunner

    from headstart.api import evaluate, predict
    from headstart.cli import app
    from headstart.runs import best_run

    out, summary = finished
    best = best_run(out, summary)
    val = sorted((data / "val" / "ants").iterdir())[:2]
    assert predict(out, val) == predict(best, val)
    assert evaluate(out, data) == evaluate(best, data)
    result = CliRunner().invoke(app, ["evaluate", str(out), str(data), "--json", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout[result.stdout.index("{"):])["accuracy"] == evaluate(best, data)["accuracy"]

