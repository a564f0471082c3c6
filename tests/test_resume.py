"""Nothing lost: a run killed with SIGKILL anywhere and resumed ends with the same weights and the same history as
the run that was never interrupted — in the middle of `gradual` after groups unfroze, at LP-FT's switch, with
cached augmented views (linear, partial) and with augmentation in a loader worker."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from headstart.api import compare, train
from headstart.runs import RESUME_FILE, run_dir
from headstart.train import TrainConfig

from helpers import TINY

# Trains in a child process and SIGKILLs itself right before optimizer step `kill_at` (counted over the whole
# process, so across the cells of a comparison too): the harshest interruption there is, at a known place.
KILLED_RUN = """
import json, os, signal, sys
import torch
from headstart.api import TrainConfig, compare, train

job, kill_at = json.loads(sys.argv[1]), int(sys.argv[2])
steps = 0
original_step = torch.optim.AdamW.step

def step(self, *args, **kwargs):
    global steps
    steps += 1
    if steps == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return original_step(self, *args, **kwargs)

torch.optim.AdamW.step = step
if job["kind"] == "train":
    train(job["data"], TrainConfig(**job["cfg"]), job["out"])
else:
    compare(job["data"], job["strategies"], [0], job["out"], TrainConfig(**job["cfg"]), val_as_test=True)
"""

STEPS_PER_EPOCH = 3  # 12 training images in batches of 4


def run_killed(job: dict, kill_at: int, tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN, json.dumps(job), str(kill_at)], capture_output=True,
                          text=True, timeout=600, env={**_env(tmp_path)})
    assert proc.returncode == -9, f"the run was not killed where planned (exit {proc.returncode}):\n{proc.stderr[-2000:]}"


def _env(tmp_path) -> dict:
    import os

    return {**os.environ, "HEADSTART_CACHE": str(tmp_path / "cache")}


def history_without_times(path) -> list[dict]:
    """history.csv less its wall-clock columns: everything a run computed."""
    rows = list(csv.DictReader(open(path)))
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]


def assert_same_run(resumed, reference) -> None:
    assert history_without_times(resumed / "history.csv") == history_without_times(reference / "history.csv")
    best, best_ref = load_file(str(resumed / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    assert best.keys() == best_ref.keys() and all(torch.equal(best[k], best_ref[k]) for k in best)
    last = torch.load(resumed / RESUME_FILE, weights_only=True)["point"]  # kept: the weights after the last epoch
    last_ref = torch.load(reference / RESUME_FILE, weights_only=True)["point"]
    assert all(torch.equal(last["model"][k], last_ref["model"][k]) for k in last_ref["model"])


CASES = {
    # strategy: (settings, the optimizer step to die before)
    "linear": ({}, 2 * STEPS_PER_EPOCH + 2),  # cached augmented views, mid-epoch 3
    "partial": ({"views": 0}, 2 * STEPS_PER_EPOCH + 2),  # streamed augmentation in a loader worker
    "gradual": ({}, 3 * STEPS_PER_EPOCH + 2),  # epoch 4: three groups have unfrozen since the start
    "lp-ft": ({}, 3 * STEPS_PER_EPOCH + 1),  # the very first step after the linear probe's 3 epochs
}


@pytest.mark.parametrize("strategy", list(CASES))
def test_a_run_killed_anywhere_resumes_into_the_same_run(strategy, image_folder, tmp_path, monkeypatch):
    settings, kill_at = CASES[strategy]
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "cache"))
    cfg = dict(model=TINY, strategy=strategy, epochs=6, batch_size=4, patience=None, device="cpu",
               keep_checkpoints=True, **settings)
    reference = tmp_path / "reference"
    train(image_folder, TrainConfig(**cfg), reference)

    out = tmp_path / "killed"
    run_killed({"kind": "train", "data": str(image_folder), "cfg": cfg, "out": str(out)}, kill_at, tmp_path)
    assert not (out / "run.json").exists()  # it died mid-run ...
    assert torch.load(out / RESUME_FILE, weights_only=True)["point"]["epochs_done"] == (kill_at - 1) // STEPS_PER_EPOCH

    run = train(image_folder, TrainConfig(**cfg, resume=True), out)  # ... and continues where it stopped
    assert run["epochs"] == 6 and not run["interrupted"]
    assert_same_run(out, reference)


def test_a_finished_run_removes_its_resume_point_unless_asked_to_keep_it(image_folder, tmp_path):
    cfg = TrainConfig(model=TINY, strategy="linear", epochs=2, batch_size=4, device="cpu")
    train(image_folder, cfg, tmp_path / "plain")
    assert not (tmp_path / "plain" / RESUME_FILE).exists()
    train(image_folder, TrainConfig(**{**cfg.to_dict(), "keep_checkpoints": True}), tmp_path / "kept")
    assert (tmp_path / "kept" / RESUME_FILE).is_file()


def test_a_resume_point_of_another_run_is_refused(image_folder, tmp_path):
    from headstart.errors import HeadstartError

    cfg = dict(model=TINY, strategy="linear", epochs=2, batch_size=4, device="cpu", keep_checkpoints=True)
    train(image_folder, TrainConfig(**cfg), tmp_path / "run")
    with pytest.raises(HeadstartError, match="resume point of another run.*train.strategy"):
        train(image_folder, TrainConfig(**{**cfg, "strategy": "partial", "resume": True}), tmp_path / "run")


def test_compare_resumes_a_half_finished_cell_from_its_last_epoch(image_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "cache"))
    cfg = dict(model=TINY, epochs=4, batch_size=4, patience=None, device="cpu", keep_checkpoints=True)
    strategies = ["linear", "lp-ft"]
    reference = tmp_path / "reference"
    compare(image_folder, strategies, [0], reference, TrainConfig(**cfg), val_as_test=True)

    out = tmp_path / "killed"
    job = {"kind": "compare", "data": str(image_folder), "strategies": strategies, "cfg": cfg, "out": str(out)}
    run_killed(job, 4 * STEPS_PER_EPOCH + 3 * STEPS_PER_EPOCH + 2, tmp_path)  # lp-ft, in its 4th epoch
    lp_ft = run_dir(out, "lp-ft", 0)
    assert (run_dir(out, "linear", 0) / "run.json").is_file() and not (lp_ft / "run.json").exists()
    assert torch.load(lp_ft / RESUME_FILE, weights_only=True)["point"]["epochs_done"] == 3

    summary = compare(image_folder, strategies, [0], out, TrainConfig(**cfg), val_as_test=True)
    assert set(summary["strategies"]) == set(strategies)
    for name in strategies:
        assert_same_run(run_dir(out, name, 0), run_dir(reference, name, 0))
