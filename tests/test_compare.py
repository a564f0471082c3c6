"""compare: every strategy × seed on one split, judged on test images nothing was selected on; summary.json from
the runs' own records (test predictions, histories); resumable, and reused only on the very same images."""

from __future__ import annotations

import csv
import json
import shutil
import statistics

import numpy as np
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
    summary = compare(data, STRATEGIES, SEEDS, out, tiny_config(cache_dir=str(out / "cache")), val_as_test=True,
                      command="test")
    return out, summary


def history(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_summary_equals_statistics_recomputed_from_the_runs_records(finished):
    """Reported: the test metric, averaged over seeds from each run's test_predictions.csv; apart from it, the
    selection figure (the best epoch's val accuracy from history.csv); the verdict decides the winner."""
    out, summary = finished
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["winner"] == summary["winner"] and set(on_disk["strategies"]) == set(STRATEGIES)
    assert on_disk["metric"] == "accuracy" and "margin" not in on_disk and "margin_exceeds_spread" not in on_disk
    for name in STRATEGIES:
        rows = [history(run_dir(out, name, s) / "history.csv") for s in SEEDS]
        runs = [json.loads((run_dir(out, name, s) / "run.json").read_text()) for s in SEEDS]
        tests = [np.mean([r["true"] == r["predicted"] for r in history(run_dir(out, name, s) / "test_predictions.csv")])
                 for s in SEEDS]
        best_val = [max(float(r["val_accuracy"]) for r in h) for h in rows]
        final_train = [float(h[-1]["train_accuracy"]) for h in rows]
        gap = [float(h[-1]["train_accuracy"]) - float(h[-1]["val_accuracy"]) for h in rows]
        got = on_disk["strategies"][name]
        assert got["test"]["estimate"] == pytest.approx(statistics.mean(tests), abs=1e-9), name
        assert got["test"]["low"] <= got["test"]["estimate"] <= got["test"]["high"]
        assert got["test_per_seed"] == pytest.approx(tests) == [r["test_accuracy"] for r in runs]
        assert got["test"] == on_disk["verdict"]["intervals"][name]  # the table shows the verdict's own numbers
        for key, values in (("val_accuracy_best", best_val), ("final_train_accuracy", final_train), ("gap", gap),
                            ("wall_seconds", [r["train_seconds"] for r in runs]),
                            ("trainable_params", [r["trainable_params_max"] for r in runs])):
            assert got[f"{key}_mean"] == pytest.approx(statistics.mean(values), abs=1e-9), (name, key)
            assert got[f"{key}_std"] == pytest.approx(statistics.stdev(values), abs=1e-9), (name, key)
    verdict = on_disk["verdict"]
    assert on_disk["winner"] == verdict["winner"] and on_disk["recommended"] == verdict["recommended"]
    assert on_disk["winner"] in (None, verdict["best"])
    estimates = {n: on_disk["strategies"][n]["test"]["estimate"] for n in STRATEGIES}
    assert on_disk["ranking"] == sorted(estimates, key=estimates.get, reverse=True)
    assert on_disk["sentence"] == verdict["sentence"]


def test_nothing_is_computed_twice_across_the_cells_and_the_summary_says_what_each_reused(finished):
    """Every cache entry (decoded images, frozen features) is built by one run of the comparison and read back by
    the others that need it: no key is built twice, the later cells reuse the decoded images (the test model's
    random weights differ per seed, so its features do too); the summary adds up the runs' records."""
    out, summary = finished
    records = {d.name: json.loads((d / "run.json").read_text())["cache"] for d in sorted((out / "runs").iterdir())}
    built = [r["key"] for rs in records.values() for r in rs if not r["reused"]]
    assert built and len(built) == len(set(built))
    assert all(r["reused"] for name, rs in records.items() if name != "scratch-seed0"
               for r in rs if r["store"] == "decoded")
    runs = [r for row in summary["strategies"].values() for r in row["runs"]]
    assert summary["cache"]["runs"] == len(runs) == len(records)
    assert summary["cache"]["computed"] == len(built)
    assert summary["cache"]["reused"] == sum(r["reused"] for rs in records.values() for r in rs) > 0
    assert all(r["cache"]["computed"] or r["cache"]["reused"] for r in runs)
    assert "read" in (out / "report.md").read_text() and "Computed once and shared" in (out / "report.md").read_text()


def test_controlled_settings_are_the_same_for_every_strategy(finished):
    out, summary = finished
    configs = {n: json.loads((run_dir(out, n, 0) / "config.json").read_text())["train"] for n in STRATEGIES}
    assert {c["augment"] for c in configs.values()} == {"light"}  # one augmentation for all, linear included
    assert {c["epochs"] for c in configs.values()} == {2} and {c["patience"] for c in configs.values()} == {None}
    assert configs["linear"]["views"] > 0 and configs["partial"]["views"] > 0  # cached augmented views
    assert all(configs[n]["views"] == 0 for n in STRATEGIES if n not in ("linear", "partial"))
    splits = {json.loads((run_dir(out, n, s) / "run.json").read_text())["n_train"] for n in STRATEGIES for s in SEEDS}
    assert splits == {12}  # the same training images in every run (8/class, 2 of them carved off for val)
    fingerprints = {json.dumps(json.loads((run_dir(out, n, s) / "config.json").read_text())["fingerprints"])
                    for n in STRATEGIES for s in SEEDS}
    assert len(fingerprints) == 1  # ... the same val and test images too, by content
    ids = {tuple(r["image"] for r in history(run_dir(out, n, s) / "test_predictions.csv")) for n in STRATEGIES for s in SEEDS}
    assert len(ids) == 1 and len(next(iter(ids))) == 8 and next(iter(ids))[0].startswith("val/")  # val/ became test
    assert summary["setup"]["seeds"] == SEEDS and summary["setup"]["command"] == "test"


def test_reports_have_one_row_per_strategy(finished):
    out, summary = finished
    md = (out / "report.md").read_text()
    results = md.split("## Where this data sits")[0]
    table_rows = [line for line in results.splitlines() if line.startswith("| ") and not line.startswith("| strategy")]
    assert len(table_rows) == len(STRATEGIES)
    assert summary["sentence"][1:] in md.split("\n\n")[1]  # the verdict is the first paragraph
    assert "nothing was selected on" in md and "val images" in md  # what was selected on what, in small type
    html = (out / "report.html").read_text()
    assert html.count('data-strategy="') == len(STRATEGIES)
    assert "src=\"file:" not in html and "http://" not in html.replace("http://www.w3.org/2000/svg", "")  # self-contained


def test_the_reports_place_the_data_in_the_lessons_decision_table(finished):
    """compare measures where its data sits (images per class, high-level similarity) and the reports show the
    benchmark's measured 2 × 2 with that cell marked."""
    from headstart.analysis.recommend import lesson_cell, track_record

    out, summary = finished
    placed = summary["setup"]["placement"]
    assert placed["images_per_class"] == summary["setup"]["n_train"] / len(summary["setup"]["classes"])  # balanced
    assert placed["cell"] == lesson_cell(placed["images_per_class"], placed["high_level_similarity"])
    html = (out / "report.html").read_text()
    section = html.split('id="decision"')[1]
    assert section.count('class="here"') == 1 and "this comparison" in section
    measured = track_record()["decision_table"]
    for key, cell in measured.items():  # every measured cell's winners are shown, and every strategy tied at least
        assert next(iter(cell["best"])) in section
        assert f"least mean regret ({cell['mean_regret'][cell['least_regret'][0]]:.1f} pts): " \
               f"{', '.join(cell['least_regret'])}" in section
    md = (out / "report.md").read_text()
    assert "**this data**" in md and placed["cell"] in md


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
        compare(data, STRATEGIES, SEEDS, out, cfg, val_as_test=True, report=False)
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
    summary = compare(data, STRATEGIES, SEEDS, out, cfg, val_as_test=True, report=False)
    assert trained == [("partial", 0), ("scratch", 1), ("linear", 1), ("partial", 1)]
    assert {d: (d / "run.json").stat().st_mtime_ns for d in done} == done  # finished runs untouched
    assert json.loads((third / "run.json").read_text())["interrupted"] is False
    assert set(summary["strategies"]) == set(STRATEGIES)
    trained.clear()
    compare(data, STRATEGIES, SEEDS, out, cfg, val_as_test=True, report=False)
    assert trained == []  # everything finished: nothing is redone


def test_a_finished_run_with_other_settings_is_refused(finished, data):
    out, _ = finished
    with pytest.raises(HeadstartError, match="other settings.*epochs"):
        compare(data, ["scratch"], [0], out, tiny_config(epochs=3, cache_dir=str(out / "cache")), val_as_test=True)


def test_a_finished_run_in_another_precision_is_refused(finished, data):
    out, _ = finished  # the finished runs used the default precision (auto)
    with pytest.raises(HeadstartError, match="other settings.*precision: auto vs fp32"):
        compare(data, ["scratch"], [0], out, tiny_config(precision="fp32", cache_dir=str(out / "cache")),
                val_as_test=True)


def test_a_finished_run_is_held_to_the_batchnorm_parts_it_trained_with_not_to_how_they_were_asked_for(finished,
                                                                                                      data):
    """scratch at 32 px in batches of 8 trained on whole batches (automatic ghost batch norm splits none there):
    asking for parts of 8 (as large as the batch) is the same run, parts of 2 are another."""
    out, _ = finished
    config = json.loads((out / "runs" / "scratch-seed0" / "config.json").read_text())
    assert config["batchnorm_parts"] is None and config["train"]["ghost_batch_norm"] is None
    same = compare(data, ["scratch"], [0], out, tiny_config(ghost_batch_norm=8, cache_dir=str(out / "cache")),
                   val_as_test=True, report=False)
    assert "scratch" in same["strategies"]
    with pytest.raises(HeadstartError, match="other settings.*BatchNorm part.*None then vs 2 now"):
        compare(data, ["scratch"], [0], out, tiny_config(ghost_batch_norm=2, cache_dir=str(out / "cache")),
                val_as_test=True, report=False)


@pytest.mark.parametrize("other_data", [dict(per_class=4), dict(val_per_class=1)])
def test_a_finished_run_on_other_data_is_refused(finished, data, other_data):
    """Same training settings, other images (a subsample, a smaller val set): not the same experiment."""
    out, _ = finished
    with pytest.raises(HeadstartError, match="other settings.*(per_class|val_files)"):
        compare(data, ["linear"], [0], out, tiny_config(cache_dir=str(out / "cache")), val_as_test=True, **other_data)


def test_a_finished_run_on_equal_counts_of_other_images_is_not_reused(finished, data, tmp_path, monkeypatch):
    """The same folder, names and counts, with one training image swapped for a test image of its class: every
    descriptive key matches, only the content differs, and the run is not reused."""
    out, _ = finished
    copy = shutil.copytree(data, tmp_path / data.name)
    shutil.copytree(out / "runs" / "linear-seed0", tmp_path / "cmp" / "runs" / "linear-seed0")
    a, b = copy / "train" / "ants" / "000.png", copy / "val" / "ants" / "000.png"
    a_bytes = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(a_bytes)
    config = json.loads((tmp_path / "cmp" / "runs" / "linear-seed0" / "config.json").read_text())
    config["data"] = str(copy)  # recorded as if it had trained on the copy before the swap
    (tmp_path / "cmp" / "runs" / "linear-seed0" / "config.json").write_text(json.dumps(config))
    trained = []
    monkeypatch.setattr(compare_mod, "train_run", lambda *a, **k: trained.append(a))
    with pytest.raises(HeadstartError, match=r"other settings.*images: other .*test images \(same settings, different"):
        compare(copy, ["linear"], [0], tmp_path / "cmp", tiny_config(cache_dir=str(out / "cache")), val_as_test=True)
    assert trained == []
    a.write_bytes(a_bytes)  # swapped back: the same images again, and the run is reused as it is
    b.write_bytes((data / "val" / "ants" / "000.png").read_bytes())
    compare(copy, ["linear"], [0], tmp_path / "cmp", tiny_config(cache_dir=str(out / "cache")), val_as_test=True,
            report=False)
    assert trained == []


def test_compare_without_test_images_is_refused_with_the_way_out(data, tmp_path, monkeypatch):
    trained = []
    monkeypatch.setattr(compare_mod, "train_run", lambda *a, **k: trained.append(a))
    with pytest.raises(HeadstartError, match="no test split: use --val-as-test .* --test-fraction F .* --folds K"):
        compare(data, ["linear"], [0], tmp_path / "cmp", tiny_config())
    assert trained == [] and not (tmp_path / "cmp").exists()


def test_folds_pool_out_of_fold_predictions(tmp_path):
    """K-fold: every image is a test image exactly once per seed, each fold in its own run directory, and the
    reported figure is over all of them."""
    from conftest import make_folder

    data = make_folder(tmp_path / "data", n=9)  # unsplit: 18 images
    summary = compare(data, ["linear"], [0], tmp_path / "cmp", tiny_config(epochs=1, cache_dir=str(tmp_path / "cache")),
                      folds=3, report=False)
    ids = []
    for k in (1, 2, 3):
        ids += [r["image"] for r in history(tmp_path / "cmp" / "runs" / f"linear-fold{k}-seed0" / "test_predictions.csv")]
    assert sorted(ids) == sorted(f"{c}/{i}.png" for c in ("red", "blue") for i in range(9))  # each exactly once
    row = summary["strategies"]["linear"]
    assert row["n_runs"] == 3 and row["test"]["images"] == 18 and summary["setup"]["folds"] == 3
    assert "3-fold cross-validation" in summary["setup"]["evidence"]


def test_a_finished_run_on_the_same_data_named_another_way_is_reused(finished, data, monkeypatch):
    out, _ = finished
    monkeypatch.chdir(data.parent)
    trained = []
    monkeypatch.setattr(compare_mod, "train_run", lambda *a, **k: trained.append(a))
    compare(data.name, ["linear"], [0], out, tiny_config(cache_dir=str(out / "cache")), val_as_test=True, report=False)
    assert trained == []  # a relative path to the same folder is the same data


def test_bad_arguments_fail_before_training(data, tmp_path):
    with pytest.raises(HeadstartError, match="unknown strategy"):
        compare(data, ["linear", "frozen"], [0], tmp_path)
    with pytest.raises(HeadstartError, match="repeat"):
        compare(data, ["linear", "linear"], [0], tmp_path)


def test_partial_depths_compare_side_by_side(data, tmp_path):
    labels = ["partial:1", "partial:3"]
    summary = compare(data, labels, [0], tmp_path / "cmp", tiny_config(epochs=1, cache_dir=str(tmp_path / "cache")),
                      val_as_test=True)
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
        "--cache-dir", str(out / "cache"), "--out", str(out), "--val-as-test", "--json"])
    assert result.exit_code == 0, result.output
    assert trained == []  # same settings as the library call: every run is reused
    printed = json.loads(result.stdout[result.stdout.index("{"):])
    assert printed["winner"] == summary["winner"] and printed["sentence"] == summary["sentence"]
    assert printed["strategies"]["linear"]["test"] == summary["strategies"]["linear"]["test"]
    refused = CliRunner().invoke(app, ["compare", str(data), "--model", "test_efficientnet", "--out", str(out)])
    assert refused.exit_code == 2 and "--val-as-test" in refused.output and "Traceback" not in refused.output


def test_a_finished_run_whose_strategy_defaults_changed_is_refused(finished, data, monkeypatch):
    """A strategy default edited in the code since the run (here partial's head LR) is another experiment."""
    from dataclasses import replace

    from headstart import strategies

    out, _ = finished
    monkeypatch.setitem(strategies.STRATEGIES, "partial", replace(strategies.STRATEGIES["partial"], head_lr=0.5))
    with pytest.raises(HeadstartError, match="other settings.*strategy spec.*head_lr"):
        compare(data, ["partial"], [0], out, tiny_config(cache_dir=str(out / "cache")), val_as_test=True)


def test_a_comparison_folder_stands_for_its_chosen_runs_best_on_val(finished, data, tmp_path):
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



def test_the_run_a_comparison_stands_for_is_chosen_on_val_never_on_test(tmp_path):
    """No winner: the recommended strategy (the cheapest of the tied), and of its runs the best on val, even when
    another run, or another strategy, has the higher test figure."""
    from headstart.runs import best_run

    def run(name, seed, val, test):
        return {"seed": seed, "run_dir": f"runs/{name}-seed{seed}", "selection_score": val, "test_accuracy": test}

    summary = {"winner": None, "recommended": "linear", "strategies": {
        "linear": {"runs": [run("linear", 0, 0.90, 0.60), run("linear", 1, 0.80, 0.99)]},
        "full": {"runs": [run("full", 0, 0.95, 0.99)]}}}
    assert best_run(tmp_path, summary) == tmp_path / "runs" / "linear-seed0"
    assert best_run(tmp_path, {**summary, "winner": "full"}) == tmp_path / "runs" / "full-seed0"
    nothing = {**summary, "recommended": None}  # nothing beats chance: the best mean val score decides
    nothing["strategies"]["linear"]["selection_score_mean"], nothing["strategies"]["full"]["selection_score_mean"] = 0.85, 0.95
    assert best_run(tmp_path, nothing) == tmp_path / "runs" / "full-seed0"


def test_ghost_batch_norm_reaches_only_the_cells_whose_batchnorm_trains_and_the_reports_say_which():
    from headstart.compare import run_config

    from dataclasses import replace

    base = TrainConfig(ghost_batch_norm=8)
    assert run_config(base, "scratch", 0, 2, "light").ghost_batch_norm == 8
    assert all(run_config(base, label, 0, 2, "light").ghost_batch_norm is None
               for label in ("linear", "partial:1", "full", "gradual", "lp-ft"))
    assert run_config(replace(base, freeze_bn=False), "full", 0, 2, "light").ghost_batch_norm == 8  # --train-bn

    from headstart.compare import ghost_cells
    from headstart.report.markdown import ghost_text

    used = ghost_cells(base, ["scratch", "linear", "partial"], 2, "light", 64)
    assert used == {"images": 8, "strategies": ["scratch"]}
    assert ghost_text({"ghost_batch_norm": used}) == (" · scratch: BatchNorm over parts of 8 images of each batch "
                                                      "(ghost batch norm, --ghost-bn)")
    assert ghost_cells(base, ["linear", "partial"], 2, "light", 224) is None and ghost_text({}) == ""
    automatic = TrainConfig()  # parts where the image size calls for them: 224 px does, 96 px does not
    assert ghost_cells(automatic, ["scratch", "partial"], 2, "light", 224) == {"images": 8, "strategies": ["scratch"]}
    assert ghost_cells(automatic, ["scratch", "partial"], 2, "light", 96) is None
    assert ghost_cells(replace(automatic, ghost_batch_norm=0), ["scratch"], 2, "light", 224) is None
