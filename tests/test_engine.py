"""The engine: several data-parallel processes (Lightning Fabric DDP, here on CPU with gloo) train one model
with the same recipe as one process; a group that unfreezes mid-run stays in sync across processes."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from headstart.api import train
from headstart.engine import start
from headstart.errors import HeadstartError
from headstart.train import TrainConfig

from helpers import TINY


def history(run_dir) -> list[dict]:
    return list(csv.DictReader(open(run_dir / "history.csv")))


def test_two_processes_train_one_model_on_the_same_schedule_as_one(image_folder, tmp_path):
    # lp-ft unfreezes every group in epoch 3: DDP must be rebuilt then, or the processes' weights drift apart
    # (fit ends by comparing them across processes and fails the run if they differ)
    args = ["--model", TINY, "--strategy", "lp-ft", "--epochs", "3", "--batch-size", "4", "--no-cache", "--device", "cpu"]
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run([sys.executable, "-m", "headstart.cli", "train", str(image_folder), *args, "--devices", "2",
                           "--json"], capture_output=True, text=True, timeout=300, cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads(proc.stdout)  # one report on stdout, from the first process only
    assert run["devices"] == 2 and run["epochs"] == 3
    made = list((work / "runs").iterdir())  # one run directory, though each process could name its own
    assert len(made) == 1 and (made[0] / "model.safetensors").is_file()

    train(image_folder, TrainConfig(model=TINY, strategy="lp-ft", epochs=3, batch_size=4, use_cache=False,
                                    device="cpu", num_workers=0), tmp_path / "one")
    two, one = history(made[0]), history(tmp_path / "one")
    lr_columns = [k for k in one[0] if k.startswith("lr_")]
    # batch_size is the global batch: the same steps per epoch, so the same learning rate in every group and epoch
    assert [{k: r[k] for k in lr_columns} for r in two] == [{k: r[k] for k in lr_columns} for r in one]
    assert [r["trainable"] for r in two] == [r["trainable"] for r in one]


def test_a_comparison_runs_every_cell_data_parallel_and_reports_once(image_folder, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "headstart.cli", "compare", str(image_folder), "--model", TINY,
                           "--strategies", "linear,lp-ft", "--seeds", "0", "--epochs", "2", "--batch-size", "4",
                           "--device", "cpu", "--devices", "2", "--out", str(tmp_path / "cmp"), "--val-as-test", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)  # one summary on stdout: the extra process prints nothing
    assert set(summary["strategies"]) == {"linear", "lp-ft"} and (tmp_path / "cmp" / "report.html").is_file()
    for name in ("linear", "lp-ft"):
        assert json.loads((tmp_path / "cmp" / "runs" / f"{name}-seed0" / "run.json").read_text())["devices"] == 2


def test_ctrl_c_stops_every_process_and_keeps_the_best_checkpoint(image_folder, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "headstart.cli", "train", str(image_folder), "--model", TINY,
                             "--strategy", "full", "--epochs", "1000", "--patience", "0", "--batch-size", "2",
                             "--device", "cpu", "--devices", "2", "--no-cache", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (out / "model.safetensors").is_file():  # the first checkpoint: something to keep
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does in a terminal: every process of the group gets it
    try:
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("the processes did not stop after Ctrl-C") from None
    assert proc.returncode == 0, stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["interrupted"] and run["epochs"] < 1000 and (out / "model.safetensors").is_file()


def test_more_devices_than_the_machine_has_is_refused():
    with pytest.raises(HeadstartError, match="GPU"):
        start("cuda", 64)


def test_several_processes_from_a_notebook_are_refused_with_the_way_out(monkeypatch):
    monkeypatch.setitem(sys.modules, "ipykernel", object())
    with pytest.raises(HeadstartError, match="script or the headstart CLI"):
        start("cpu", 2)
