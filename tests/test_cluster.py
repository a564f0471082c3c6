"""compare --executor ray: every cell a Ray task on a local 2-CPU Ray instance, and the same answer as the serial
run; a worker killed mid-cell is retried and resumes from its last epoch; a cell that raises is recorded and the
others finish; Ctrl-C cancels what is in flight and keeps what finished; without Ray, one line and exit 2.

The Ray tests are marked `ray` (deselect with -m 'not ray'). They share one Ray instance and one serial reference
comparison (2 strategies × 2 seeds); the fault tests copy the reference's finished runs and leave one or two cells
to do, so each runs only what it tests."""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import cluster_faults
import headstart.cache as cache_mod
import headstart.compare as compare_mod
import headstart.executors as executors_mod
from headstart.cli import app
from headstart.compare import compare, warm_decoded_store, experiment_splits
from headstart.errors import HeadstartError
from headstart.executors import RayExecutor, SerialExecutor, plan_resources
from headstart.progress import eta_seconds
from headstart.runs import cell_dir
from headstart.train import TrainConfig
from tiny_images import make_dataset

STRATEGIES, SEEDS = ["scratch", "linear"], [0, 1]


def tiny_config(**kw) -> TrainConfig:
    settings = dict(model="test_efficientnet", epochs=2, image_size=32, batch_size=8, patience=None, num_workers=0,
                    device="cpu")
    return TrainConfig(**{**settings, **kw})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("shared-cache")


@pytest.fixture(scope="module")
def serial(data, cache, tmp_path_factory):
    """The reference: the comparison run one cell after another in this process."""
    out = tmp_path_factory.mktemp("serial")
    torch.set_num_threads(1)  # as many threads as a Ray cell holds CPUs: the same sums in the same order
    return out, compare(data, STRATEGIES, SEEDS, out, tiny_config(cache_dir=str(cache)), val_as_test=True)


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray instance with 2 CPUs for the module. On a loaded 2-core box Ray's processes start slowly:
    workers get 10 minutes to register (not 1), and a node that missed Ray's fixed 30 s start-up wait gets
    two more tries."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_worker_register_timeout_seconds", "600")
    for attempt in range(3):
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
            break
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise
    ray.cloudpickle.register_pickle_by_value(cluster_faults)  # workers cannot import tests/: send the faults whole
    yield ray
    ray.shutdown()


def copy_runs(reference, out, leave_out: list[tuple[str, int]]):
    """A comparison folder holding the reference's finished runs but `leave_out` (strategy, seed): still to do."""
    for strategy in STRATEGIES:
        for seed in SEEDS:
            if (strategy, seed) not in leave_out:
                shutil.copytree(cell_dir(reference, strategy, seed), cell_dir(out, strategy, seed))
    return out


def history_without_times(run) -> list[dict]:
    with open(run / "history.csv", newline="") as f:
        return [{k: v for k, v in row.items() if "seconds" not in k} for row in csv.DictReader(f)]


def assert_same_run(run, reference) -> None:
    """Everything a run computed: its history, its best weights, its test predictions."""
    assert history_without_times(run) == history_without_times(reference), run.name
    weights, expected = load_file(str(run / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    assert weights.keys() == expected.keys() and all((weights[k] == expected[k]).all() for k in weights), run.name
    assert (run / "test_predictions.csv").read_text() == (reference / "test_predictions.csv").read_text(), run.name


def what_it_concluded(summary: dict) -> dict:
    """The summary less what depends on the clock (seconds, and the cheapest-of-the-tied choice made by them) and
    on what the cache held when a run started (which entries it built and which it read back)."""
    keep = ("metric", "winner", "best", "tied", "ranking", "n_test", "chance")
    table = {name: {"test": row["test"], "test_per_seed": row["test_per_seed"],
                    "runs": [{k: v for k, v in r.items() if "seconds" not in k and k != "cache"} for r in row["runs"]],
                    **{k: v for k, v in row.items() if k.startswith(("val_", "final_", "gap", "trainable"))}}
             for name, row in summary["strategies"].items()}
    return {**{k: summary[k] for k in keep}, "strategies": table}


# ------------------------------------------------------------------------------------------------ the same answer
@pytest.mark.ray
def test_a_local_ray_cluster_gives_the_serial_answer(ray_cluster, serial, data, cache, tmp_path):
    reference, expected = serial
    out = tmp_path / "ray"
    summary = compare(data, STRATEGIES, SEEDS, out, tiny_config(cache_dir=str(cache)), val_as_test=True,
                      executor=RayExecutor())
    assert what_it_concluded(summary) == what_it_concluded(expected)
    assert summary["failed"] == [] and summary["left_out"] == []
    # the workers read the cache the serial run filled (the same folder): they computed none of it again
    assert summary["cache"]["computed"] == 0 and summary["cache"]["reused"] == expected["cache"]["reused"] + \
        expected["cache"]["computed"]
    for strategy in STRATEGIES:
        for seed in SEEDS:
            assert_same_run(cell_dir(out, strategy, seed), cell_dir(reference, strategy, seed))
    assert json.loads((out / "summary.json").read_text())["winner"] == expected["winner"]
    assert (out / "report.html").is_file() and (out / "report.md").is_file()  # written by the driver, at the end


# ------------------------------------------------------------------------------------------------ faults
@pytest.mark.ray
def test_a_worker_killed_mid_cell_is_retried_and_resumes_from_its_last_epoch(ray_cluster, serial, data, cache,
                                                                               tmp_path, monkeypatch):
    reference, expected = serial
    out = copy_runs(reference, tmp_path / "killed", leave_out=[("scratch", 1)])
    log = tmp_path / "attempts.txt"
    # 12 training images in batches of 8: 2 steps an epoch; step 3 is the first of epoch 2
    monkeypatch.setattr(compare_mod, "train_run", cluster_faults.DieOnce("scratch", 1, at_step=3, log=log))
    summary = compare(data, STRATEGIES, SEEDS, out, tiny_config(cache_dir=str(cache)), val_as_test=True,
                      executor=RayExecutor(), report=False)
    assert log.read_text() == "attempt 1\nretry from epoch 1\n"  # died once, then went on from its resume point
    assert summary["failed"] == [] and set(summary["strategies"]) == set(STRATEGIES)
    assert_same_run(cell_dir(out, "scratch", 1), cell_dir(reference, "scratch", 1))
    assert what_it_concluded(summary) == what_it_concluded(expected)


@pytest.mark.parametrize("executor", ["serial", pytest.param("ray", marks=pytest.mark.ray)])
def test_a_cell_that_raises_on_bad_data_is_reported_and_the_others_finish(executor, serial, data, cache, tmp_path,
                                                                         monkeypatch, request):
    if executor == "ray":
        request.getfixturevalue("ray_cluster")
    torch.set_num_threads(1)  # (a serial cell then computes what the reference did)
    reference, _ = serial
    out = copy_runs(reference, tmp_path / "bad", leave_out=[("linear", 1), ("scratch", 1)])
    log = tmp_path / "attempts.txt"
    monkeypatch.setattr(compare_mod, "train_run", cluster_faults.BadDataIn("linear", 1, log=log))
    summary = compare(data, STRATEGIES, SEEDS, out, tiny_config(cache_dir=str(cache)), val_as_test=True,
                      executor=RayExecutor() if executor == "ray" else SerialExecutor())
    assert log.read_text() == "attempt\n"  # its own error: tried once, not retried
    [failure] = summary["failed"]
    assert (failure["strategy"], failure["seed"], failure["run_dir"]) == ("linear", 1, "runs/linear-seed1")
    assert failure["error"].startswith("ValueError: bad data: cannot identify image file")
    assert "Traceback" in failure["details"] or "ValueError" in failure["details"]
    assert summary["left_out"] == ["linear"] and list(summary["strategies"]) == ["scratch"]  # (its seeds unpaired)
    assert (cell_dir(out, "scratch", 1) / "run.json").is_file()  # the other cell finished
    assert_same_run(cell_dir(out, "scratch", 1), cell_dir(reference, "scratch", 1))
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["failed"][0]["error"] == failure["error"]
    assert "1 run failed (linear seed 1: ValueError: bad data" in (out / "report.md").read_text()


@pytest.mark.ray
def test_ctrl_c_cancels_the_cells_in_flight_and_keeps_the_finished_ones(ray_cluster, serial, data, cache, tmp_path,
                                                                          monkeypatch):
    reference, expected = serial
    out = copy_runs(reference, tmp_path / "ctrl-c", leave_out=[("scratch", 1), ("linear", 1)])
    log = tmp_path / "hang.txt"
    monkeypatch.setattr(compare_mod, "train_run", cluster_faults.HangIn("linear", 1, log=log))
    real_report = executors_mod.report

    def ctrl_c_after_the_first_cell(outcome):  # the driver is interrupted while linear seed 1 still runs
        real_report(outcome)
        raise KeyboardInterrupt

    monkeypatch.setattr(executors_mod, "report", ctrl_c_after_the_first_cell)
    with pytest.raises(KeyboardInterrupt):
        compare(data, STRATEGIES, SEEDS, out, tiny_config(cache_dir=str(cache)), val_as_test=True,
                executor=RayExecutor(max_parallel=2))
    assert log.read_text() == "started\ncancelled\n"  # ray.cancel reached the running cell
    finished = cell_dir(out, "scratch", 1) / "run.json"
    assert not json.loads(finished.read_text())["interrupted"]
    kept = finished.stat().st_mtime_ns

    monkeypatch.undo()  # the real training again: the next compare finishes only what is missing
    summary = compare(data, STRATEGIES, SEEDS, out, tiny_config(cache_dir=str(cache)), val_as_test=True,
                      executor=RayExecutor(), report=False)
    assert finished.stat().st_mtime_ns == kept  # reused, not redone
    assert what_it_concluded(summary) == what_it_concluded(expected)


# ------------------------------------------------------------------------------------------------ caches
def test_the_decoded_store_warmed_before_dispatch_is_what_every_cell_reads(data, tmp_path, monkeypatch):
    """The driver decodes once (compare does it before handing cells to a parallel executor); then no cell,
    scratch (random weights) or linear (pretrained), decodes anything: their cache keys are the warmed ones."""
    cfg = tiny_config(epochs=1, cache_dir=str(tmp_path / "cache"))
    splits = experiment_splits(data, None, val_fraction=0.2, data_seed=0, classes=None, per_class=None,
                               val_per_class=None, test_fraction=0.0, val_as_test=True)
    warm_decoded_store(splits, cfg)
    assert len(list((tmp_path / "cache" / "decoded").glob("*.npy"))) == 3  # train, val, test

    def no_decoding(*args, **kwargs):
        raise AssertionError("a cell decoded images the driver had decoded already")

    monkeypatch.setattr(cache_mod, "_decode_all", no_decoding)
    summary = compare(data, STRATEGIES, [0], tmp_path / "cmp", cfg, val_as_test=True, report=False)
    assert summary["failed"] == []


# ------------------------------------------------------------------------------------------------ planning, CLI
def test_cells_ask_for_what_the_machine_has():
    laptop = plan_resources({"CPU": 2.0, "memory": 8 * 1024**3})
    assert (laptop.cpus, laptop.gpus, laptop.at_once) == (1, 0, 2)  # one core each: two cells side by side
    node = plan_resources({"CPU": 64.0, "GPU": 8.0})
    assert (node.cpus, node.gpus, node.at_once) == (8, 1, 8)  # one GPU each, with its share of the cores
    halves = plan_resources({"CPU": 64.0, "GPU": 8.0}, gpus=0.5)
    assert (halves.cpus, halves.at_once) == (4, 16)  # two small runs share a card
    assert plan_resources({"CPU": 64.0, "GPU": 8.0}, max_parallel=3).at_once == 3
    on_cpus = plan_resources({"CPU": 64.0, "GPU": 8.0}, use_gpus=False)  # --device cpu: no GPU held idle
    assert (on_cpus.cpus, on_cpus.gpus, on_cpus.at_once) == (1, 0, 64)
    assert plan_resources({"CPU": 16.0, "memory": 32 * 1024**3}, memory_gb=10).at_once == 3  # memory is scarcest
    with pytest.raises(HeadstartError, match="has 0 GPUs"):
        plan_resources({"CPU": 4.0}, gpus=1)
    assert eta_seconds(0, 4, 10.0) is None and eta_seconds(2, 4, 10.0) == 20.0


def test_without_ray_the_ray_executor_says_how_to_install_it(data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    result = CliRunner().invoke(app, ["compare", str(data), "--val-as-test", "--executor", "ray",
                                      "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 2
    assert "pip install 'headstart[cluster]'" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "cmp").exists()


@pytest.mark.parametrize("flags, message", [(["--executor", "dask"], "--executor must be serial or ray"),
                                            (["--address", "auto"], "--address is an option of --executor ray"),
                                            (["--executor", "ray", "--max-parallel", "0"], "at least 1")])
def test_bad_executor_options_fail_in_one_line(flags, message, data, tmp_path):
    result = CliRunner().invoke(app, ["compare", str(data), "--val-as-test", "--out", str(tmp_path / "c"), *flags])
    assert result.exit_code == 2 and message in result.output
