"""The engine: several data-parallel processes (Lightning Fabric DDP, here on CPU with gloo) train one model
with the same recipe as one process; a group that unfreezes mid-run stays in sync across processes; Ctrl-C
stops every process after the same step, keeping the best checkpoint."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from headstart import engine
from headstart.api import train
from headstart.engine import catch_interrupts, release_the_others, start, stop_requested
from headstart.errors import HeadstartError
from headstart.strategies import get_strategy
from headstart.train import TrainConfig, fit

from helpers import TINY, one_step_config, splits_for, tiny_model


HANG_GUARD_S = 900  # a subprocess that takes longer has hung: 30-40 s here beside other work, minutes on a busy box


def history(run_dir) -> list[dict]:
    return list(csv.DictReader(open(run_dir / "history.csv")))


def test_two_processes_train_one_model_on_the_same_schedule_as_one(image_folder, tmp_path):
    # lp-ft unfreezes every group in epoch 3: DDP must be rebuilt then, or the processes' weights drift apart
    # (fit ends by comparing them across processes and fails the run if they differ)
    args = ["--model", TINY, "--strategy", "lp-ft", "--epochs", "3", "--batch-size", "4", "--no-cache", "--device", "cpu"]
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run([sys.executable, "-m", "headstart.cli", "train", str(image_folder), *args, "--devices", "2",
                           "--json"], capture_output=True, text=True, timeout=HANG_GUARD_S, cwd=work)
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
                          capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)  # one summary on stdout: the extra process prints nothing
    assert set(summary["strategies"]) == {"linear", "lp-ft"} and (tmp_path / "cmp" / "report.html").is_file()
    for name in ("linear", "lp-ft"):
        assert json.loads((tmp_path / "cmp" / "runs" / f"{name}-seed0" / "run.json").read_text())["devices"] == 2


# Stopping (a step, writing the run's report, exiting) took 0.40-0.46x as long as starting (9-12 s against 23-29 s,
# 10 runs on 2 cores beside two CPU hogs); before the fix, 5-21 s: a process caught in a collective by Ctrl-C
# waited there until the first had written its run and exited.
STOP_FACTOR = 3.0


def start_endless_two_process_run(image_folder, out) -> tuple[subprocess.Popen, float]:
    """A 2-process CLI run in a session of its own (a terminal's foreground group), once its first checkpoint
    is on disk; with the seconds that took: this machine's speed under its present load, the yardstick of how
    long stopping may take."""
    began = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "headstart.cli", "train", str(image_folder), "--model", TINY,
                             "--strategy", "full", "--epochs", "1000", "--patience", "0", "--batch-size", "2",
                             "--device", "cpu", "--devices", "2", "--no-cache", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    while not (out / "config.json").is_file():  # the checkpoint's second file: something whole to keep
        if proc.poll() is not None or time.monotonic() - began > HANG_GUARD_S:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"no checkpoint appeared: {proc.communicate()[1][-3000:]}")
        time.sleep(0.2)
    return proc, time.monotonic() - began


def assert_every_process_stops_keeping_the_best(proc: subprocess.Popen, out, startup_s: float, record) -> None:
    """The run ends well within the time it took to start (both measured under the same load): the command
    exits 0, no process of its session is left (the other rank, DataLoader workers), none died of an error,
    and the run directory holds the best checkpoint, marked interrupted. `record` (pytest's record_property)
    keeps both times in the JUnit XML report: the figures behind STOP_FACTOR."""
    bound = STOP_FACTOR * startup_s
    asked = time.monotonic()
    try:
        _, stderr = proc.communicate(timeout=bound)  # the command returned and every process closed its stderr
    except subprocess.TimeoutExpired:
        left = subprocess.run(["ps", "-o", "pid,stat,args", "--sid", str(proc.pid)], capture_output=True, text=True).stdout
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"still running {bound:.0f}s after the stop (start took {startup_s:.0f}s):\n{left}") from None
    record("startup_seconds", round(startup_s, 2))
    record("stop_seconds", round(time.monotonic() - asked, 2))
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)  # not one process of the run is left
    assert proc.returncode == 0 and "Traceback" not in stderr, stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["interrupted"] and run["epochs"] < 1000 and run["devices"] == 2
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()


def test_ctrl_c_stops_every_process_and_keeps_the_best_checkpoint(image_folder, tmp_path, record_property):
    proc, startup_s = start_endless_two_process_run(image_folder, tmp_path / "run")
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does in a terminal: every process of the group gets it
    assert_every_process_stops_keeping_the_best(proc, tmp_path / "run", startup_s, record_property)


def test_a_stop_asked_of_the_first_process_alone_stops_every_process(image_folder, tmp_path, record_property):
    # SIGTERM to the command's pid (`kill PID`, a scheduler): the other process got no signal, it learns of the
    # stop through the per-step all-reduce and leaves after the same step
    proc, startup_s = start_endless_two_process_run(image_folder, tmp_path / "run")
    proc.send_signal(signal.SIGTERM)
    assert_every_process_stops_keeping_the_best(proc, tmp_path / "run", startup_s, record_property)


@pytest.fixture
def signals_cannot_escape():
    """For tests that signal their own process: a signal that reaches the handler outside `catch_interrupts`
    fails the test, instead of ending the pytest session (KeyboardInterrupt) or the process (SIGTERM)."""

    def escaped(signum, frame):
        raise AssertionError(f"signal {signum} was not caught by catch_interrupts")

    previous = {sig: signal.signal(sig, escaped) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield escaped
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def test_a_signal_in_the_loop_asks_to_stop_and_a_second_one_stops_at_once(signals_cannot_escape):
    fabric = start("cpu")
    with catch_interrupts():
        assert not stop_requested(fabric)
        signal.raise_signal(signal.SIGINT)  # Ctrl-C: noted, nothing raised in the middle of a step
        assert stop_requested(fabric)
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGTERM)  # asked again: now
    assert not stop_requested(fabric)  # the next run starts unasked
    assert signal.getsignal(signal.SIGINT) is signals_cannot_escape  # the handlers from before are back


def test_ctrl_c_during_a_checkpoint_save_lets_it_finish_and_stops_after_the_next_step(image_folder, monkeypatch,
                                                                                       signals_cannot_escape):
    model = tiny_model()
    train_split, val_split = splits_for(image_folder, model)
    checkpoint, answers = [], []
    asked = engine.stop_requested
    monkeypatch.setattr(engine, "stop_requested", lambda fabric: answers.append(asked(fabric)) or answers[-1])

    def save(state, epoch):  # a checkpoint is two files; Ctrl-C comes between them
        checkpoint.append("weights")
        signal.raise_signal(signal.SIGINT)
        checkpoint.append("config")

    cfg = one_step_config(epochs=5, batch_size=4)  # 12 training images: 3 steps per epoch
    result = fit(model, get_strategy("full"), train_split, val_split, cfg, on_checkpoint=save)
    assert checkpoint == ["weights", "config"]  # the checkpoint whole
    assert answers == [False, False, False, True]  # epoch 1's three steps, then one more: epoch 2's first
    assert result.interrupted and len(result.history) == 1 and result.best_epoch == 1 and result.best_state


def test_the_first_process_at_its_exit_waits_for_the_others_and_kills_what_does_not_end():
    ends = subprocess.Popen([sys.executable, "-c", "pass"])
    release_the_others([ends], grace_s=600)
    assert ends.returncode == 0  # waited for, not killed
    hangs = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    release_the_others([hangs], grace_s=0)
    assert hangs.returncode == -signal.SIGKILL


def test_more_devices_than_the_machine_has_is_refused():
    with pytest.raises(HeadstartError, match="GPU"):
        start("cuda", 64)


def test_several_processes_from_a_notebook_are_refused_with_the_way_out(monkeypatch):
    monkeypatch.setitem(sys.modules, "ipykernel", object())
    with pytest.raises(HeadstartError, match="script or the headstart CLI"):
        start("cpu", 2)
