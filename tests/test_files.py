"""Files a later step trusts are whole or absent; one process writes into a folder at a time.

Crashes are real here: child processes are SIGKILLed mid-write and while holding locks. The tests synchronise
with the children through their output and their stdin (a child says what it reached, then waits for a line),
never with sleeps, and every wait has a generous bound for a loaded 2-core machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import headstart
from headstart.files import (
    HOST, LOCK_NAME, InUse, atomic_path, atomic_write_json, atomic_write_text, exclusive, folder_lock, lock_holder,
    remove_stale_temps, temp_path, temp_writer,
)
from headstart.runs import read_history, run_folder_lock, write_history

WAIT = 300  # seconds: a child imports torch on a busy 2-core machine; it never takes this long when all is well


class Child:
    """A Python process running `code`, whose output lines the test reads as they come (stderr included)."""

    def __init__(self, code: str, *args: object):
        env = {**os.environ, "PYTHONPATH": str(Path(headstart.__file__).parents[1]), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, start: str) -> str:
        """The first (next) output line that starts with `start`; fails if the child ends or stays silent."""
        while True:
            try:
                line = self.lines.get(timeout=WAIT)
            except queue.Empty:
                pytest.fail(f"child {self.pid} printed no '{start}' in {WAIT}s; so far: {self.seen}")
            if line is None:
                pytest.fail(f"child {self.pid} ended (rc {self.proc.wait()}) before '{start}'; output: {self.seen}")
            self.seen.append(line)
            if line.startswith(start):
                return line

    def send(self, line: str = "go") -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        """SIGKILL, then reap it (a zombie would still look alive to `remove_stale_temps`)."""
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(timeout=WAIT) == -signal.SIGKILL

    def finish(self) -> int:
        self.proc.stdin.close()
        return self.proc.wait(timeout=WAIT)

    def close(self) -> None:
        """End it and close both pipes: a pipe left for the garbage collector is a ResourceWarning that pytest
        pins on whichever later test happens to collect it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=WAIT)
        self.reader.join(timeout=WAIT)  # it ends at the pipe's EOF, now that the child is gone
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):  # (a broken pipe to a dead child has nothing left to flush)
                pipe.close()


@pytest.fixture
def children():
    started: list[Child] = []

    def start(code: str, *args: object) -> Child:
        started.append(Child(code, *args))
        return started[-1]

    yield start
    for child in started:
        child.close()


HOLD_FOLDER = """
import sys
from headstart.files import folder_lock
with folder_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.readline()
print("released", flush=True)
"""

HALF_WRITE = """
import sys
from headstart.files import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    with open(tmp, "wb") as f:
        f.write(b"half of the new")
        f.flush()
    print("writing", tmp.name, flush=True)
    sys.stdin.readline()  # killed here
"""


# --------------------------------------------------------------------------- atomic writes
def test_atomic_writes_replace_the_file_and_leave_no_temp(tmp_path):
    target = tmp_path / "run.json"
    atomic_write_json(target, {"path": tmp_path, "accuracy": np.float32(0.5), "counts": np.arange(3)})
    assert json.loads(target.read_text()) == {"path": str(tmp_path), "accuracy": 0.5, "counts": [0, 1, 2]}
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_atomic_path_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old, good")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half of the ne")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old, good" and [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_temp_names_keep_the_suffix_and_the_writer_pid(tmp_path):
    tmp = temp_path(tmp_path / "abc.npy")
    assert tmp.parent == tmp_path and tmp.suffix == ".npy" and tmp.name.startswith(".abc.tmp-")  # numpy adds no .npy
    assert temp_writer(tmp) == (HOST, os.getpid()) and temp_writer(tmp_path / "abc.npy") is None
    assert temp_path(tmp_path / "abc.npy") != tmp  # two writers in one process never share a temp


def test_a_writer_killed_mid_write_leaves_the_old_file_and_a_temp_that_is_cleaned(tmp_path, children):
    target = tmp_path / "history.csv"
    target.write_text("epoch\n1\n")
    writer = children(HALF_WRITE, target)
    temp = tmp_path / writer.expect("writing").split()[1]
    live = temp_path(tmp_path / "other.csv")  # a writer of this process, still running
    live.write_text("in progress")
    writer.kill()
    elsewhere = tmp_path / temp.name.replace(HOST, "0" * 8 if HOST != "0" * 8 else "1" * 8)
    elsewhere.write_text("a pid of another machine sharing the folder: says nothing here")
    assert target.read_text() == "epoch\n1\n" and temp.is_file()  # the old file, whole; the half one aside
    assert remove_stale_temps(tmp_path) == [temp]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["history.csv", live.name, elsewhere.name])


def test_history_round_trips_through_an_atomic_write(tmp_path):
    rows = [{"epoch": 1, "val_accuracy": 0.5, "groups": "head"}, {"epoch": 2, "val_accuracy": 0.75, "groups": "head+s7"}]
    write_history(tmp_path / "history.csv", rows)
    assert read_history(tmp_path / "history.csv") == rows and len(list(tmp_path.iterdir())) == 1


# --------------------------------------------------------------------------- folder locks
def test_a_busy_folder_stops_the_second_process_at_once_naming_the_holder(tmp_path, children):
    out = tmp_path / "runs" / "x"
    holder = children(HOLD_FOLDER, out)
    holder.expect("held")
    assert lock_holder(out / LOCK_NAME) == holder.pid
    with pytest.raises(InUse) as busy, run_folder_lock(out):
        pytest.fail("entered a folder that another process holds")
    assert busy.value.pid == holder.pid
    assert str(busy.value) == (f"{out} is in use by another headstart process (pid {holder.pid}); "
                               "wait for it or use another --out")
    holder.send()
    holder.expect("released")
    assert holder.finish() == 0
    with run_folder_lock(out) as folder:  # free again
        assert folder == out and lock_holder(out / LOCK_NAME) == os.getpid()


def test_a_waiter_gets_the_lock_when_the_holder_lets_go(tmp_path, children):
    holder = children(HOLD_FOLDER, tmp_path)
    holder.expect("held")
    waited_for = []

    def on_wait(pid):  # called once, before waiting: now let the holder go
        waited_for.append(pid)
        holder.send()

    with exclusive(tmp_path / LOCK_NAME, timeout=WAIT, on_wait=on_wait):
        assert waited_for == [holder.pid] and lock_holder(tmp_path / LOCK_NAME) == os.getpid()


def test_a_sigkilled_holder_leaves_no_stale_lock(tmp_path, children):
    """flock locks belong to the process: the kernel drops them when it dies, however it dies."""
    holder = children(HOLD_FOLDER, tmp_path)
    holder.expect("held")
    with pytest.raises(InUse), folder_lock(tmp_path):
        pass
    holder.kill()
    with folder_lock(tmp_path):  # at once, no timeout to run out
        assert lock_holder(tmp_path / LOCK_NAME) == os.getpid()


def test_taking_a_folder_removes_what_killed_writers_left_in_it(tmp_path, children):
    writer = children(HALF_WRITE, tmp_path / "model.safetensors")
    temp = tmp_path / writer.expect("writing").split()[1]
    writer.kill()
    with folder_lock(tmp_path):
        assert not temp.exists()


def test_second_train_into_a_held_run_folder_stops_with_exit_2(image_folder, tmp_path, children):
    from headstart.cli import app

    out = tmp_path / "run"
    holder = children(HOLD_FOLDER, out)
    holder.expect("held")
    result = CliRunner().invoke(app, ["train", str(image_folder), "--model", "test_efficientnet", "--epochs", "1",
                                      "--out", str(out)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert (f"is in use by another headstart process (pid {holder.pid}); wait for it or use another --out"
            in " ".join(result.output.split()))
    assert not (out / "model.safetensors").exists()  # it stopped before writing anything


def test_a_comparison_into_a_held_folder_stops_before_training(image_folder, tmp_path):
    from headstart.api import TrainConfig, compare
    from headstart.errors import HeadstartError
    from headstart.runs import run_folder_lock

    with run_folder_lock(tmp_path / "cmp"):  # another headstart process holds it
        with pytest.raises(HeadstartError, match="in use by another headstart process"):
            compare(image_folder, ["linear"], [0], tmp_path / "cmp", TrainConfig(model="test_efficientnet"),
                    val_as_test=True)
    assert not (tmp_path / "cmp" / "runs").exists()
