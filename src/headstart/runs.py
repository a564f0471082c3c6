"""The run directory: plain files that everything downstream (evaluate, predict, reports) reads.

    model.safetensors   best weights of the StagedModel (safetensors: no pickle, safe to load)
    config.json         what rebuilds it: model name, classes, preprocessing, strategy, train config
    run.json            results: test_accuracy (reported), val_accuracy_best (selected on), times, counts, ...
    test_predictions.csv  per test image: id, true and predicted class (what compare pairs strategies on)
    seen_images.json    content hashes of the train and val images (what evaluate refuses to score silently)
    history.csv         one row per epoch: losses, accuracies, the LR of every group
    curves.png, confusion.png

A comparison folder holds one run directory per cell (`run_dir`, `cell_dir`) and `summary.json`; it stands
for its chosen strategy's best-on-val run wherever a run is expected (`winner_run_dir`).

Every file is replaced atomically (`headstart.files`): a run killed at any instant leaves the previous good
version of each file or the new one, never half of one. One process writes into a run directory at a time
(`run_folder_lock`).
"""

from __future__ import annotations

import csv
import io
import json
from contextlib import AbstractContextManager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from headstart.backbones import StagedModel, load_backbone
from headstart.errors import HeadstartError
# (report/html.py and report/markdown.py import atomic_write_text from here)
from headstart.files import atomic_path, atomic_write_json, atomic_write_text, folder_lock, json_default
from headstart.transforms import Preprocessing

MODEL_FILE, CONFIG_FILE, RUN_FILE, HISTORY_FILE = "model.safetensors", "config.json", "run.json", "history.csv"
RESUME_FILE = "resume.pt"  # the run after its last whole epoch: weights, optimizer, schedule, random state
SUMMARY_FILE = "summary.json"  # a comparison folder: out/summary.json beside out/runs/<label>-seed<seed>/


def write_json(path: Path, data: dict) -> None:
    """run.json, config.json, summary.json: replaced atomically (see `headstart.files`)."""
    atomic_write_json(path, data)


def plain(record: dict) -> dict:
    """`record` as it reads back from JSON (tuples as lists, paths as strings): what comparisons with a saved
    record must use."""
    return json.loads(json.dumps(record, default=json_default))


def run_folder_lock(out: str | Path) -> AbstractContextManager[Path]:
    """Held for as long as a process writes into `out` (a run directory of `train`, the folder of `compare`).
    A second process pointed at the same folder stops at once with one line naming the holder's pid, rather
    than waiting: the holder may run for hours, and the second would then overwrite its results anyway."""
    return folder_lock(out, timeout=0, hint="wait for it or use another --out")


def save_checkpoint(run_dir: Path, state: dict[str, torch.Tensor], config: dict) -> None:
    """Weights and the config that rebuilds them, each replaced atomically (a run killed mid-write leaves the
    last good checkpoint where it was)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(run_dir / MODEL_FILE) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata={"format": "headstart-staged-v1"})
    write_json(run_dir / CONFIG_FILE, config)


def save_resume_point(run_dir: Path, point: dict, config: dict) -> None:
    """The resume point of `train.fit` with the config it belongs to, replaced atomically each epoch."""
    with atomic_path(run_dir / RESUME_FILE) as tmp:
        torch.save({"point": point, "config": plain(config)}, tmp)


def load_resume_point(run_dir: Path) -> tuple[dict, dict] | None:
    """(point, config) saved by `save_resume_point`, or None when there is none."""
    path = Path(run_dir) / RESUME_FILE
    if not path.is_file():
        return None
    saved = torch.load(path, map_location="cpu", weights_only=True)
    return saved["point"], saved["config"]


def remove_resume_point(run_dir: Path) -> None:
    (Path(run_dir) / RESUME_FILE).unlink(missing_ok=True)


def is_run_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / MODEL_FILE).is_file() and (path / CONFIG_FILE).is_file()


def load_run(run_dir: str | Path) -> tuple[StagedModel, dict]:
    """The fine-tuned model of a run directory, in eval mode, and its config."""
    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        raise HeadstartError(f"{run_dir} is not a run directory (no {MODEL_FILE} and {CONFIG_FILE})")
    config = json.loads((run_dir / CONFIG_FILE).read_text())
    model = load_backbone(config["model"], pretrained=False)
    model.reset_head(len(config["classes"]))
    model.load_state_dict(load_file(str(run_dir / MODEL_FILE)))
    model.preprocessing = Preprocessing.from_dict(config["preprocessing"])
    model.pretrained, model.weights = True, f"run {run_dir}"
    return model.eval(), config


def write_history(path: Path, history: list[dict]) -> None:
    if not history:
        return
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, text.getvalue())


def read_history(path: Path) -> list[dict]:
    with Path(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: _number(v) for k, v in row.items()} for row in rows]


def _number(value: str):
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return value


def read_run(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / RUN_FILE).read_text())


# ---------------------------------------------------------------- a comparison folder: out/runs/<label>-seed<seed>
def run_dir(out: Path, label: str, seed: int) -> Path:
    """out/runs/<label>-seed<seed>; 'partial:3' becomes partial-k3 (no colons in file names)."""
    return Path(out) / "runs" / f"{label.replace(':', '-k')}-seed{seed}"


def chosen_strategy(summary: dict) -> str:
    """The strategy a comparison stands for: the verdict's winner; with none, its recommended strategy (the
    cheapest of those tied with the best); with neither (nothing beats chance), the best by mean val score."""
    if summary.get("winner") or summary.get("recommended"):
        return summary.get("winner") or summary["recommended"]
    table = summary["strategies"]
    return max(table, key=lambda s: table[s].get("selection_score_mean", table[s].get("val_accuracy_mean", 0.0)))


def best_run(out: str | Path, summary: dict, strategy: str | None = None) -> Path:
    """The run directory of `strategy` (default: `chosen_strategy`) with the best val score, the metric it
    selected on: a test figure never chooses a run, or it would stop being a test figure."""
    strategy = strategy or chosen_strategy(summary)
    runs = summary["strategies"][strategy]["runs"]
    best = max(runs, key=lambda r: r.get("selection_score", r.get("val_accuracy", 0.0)))  # (old summaries: val_accuracy)
    return Path(out) / best["run_dir"] if "run_dir" in best else run_dir(Path(out), strategy, best["seed"])


def winner_run_dir(path: str | Path) -> Path:
    """A comparison folder stands for its chosen strategy's best-on-val run (`best_run`), so `predict`, `evaluate`
    and `export` take either; anything else is returned as it is."""
    path = Path(path)
    if not (path / SUMMARY_FILE).is_file() or (path / CONFIG_FILE).is_file():
        return path
    summary = json.loads((path / SUMMARY_FILE).read_text())
    return best_run(path, summary)


# ------------------------------------------------------------------- evidence: what a run was tested and trained on
TEST_PREDICTIONS_FILE = "test_predictions.csv"  # image id, true and predicted class index, per test image
SEEN_FILE = "seen_images.json"  # content hashes of the images a run trained on and selected on


def write_test_predictions(run_dir: Path, image_ids: list[str], y_true: list[int], y_pred: list[int]) -> Path:
    """One row per test image: its id (the ref relative to the data source), true and predicted class index.
    What `compare` pairs strategies on (the same image ids in every run)."""
    path = Path(run_dir) / TEST_PREDICTIONS_FILE
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["image", "true", "predicted"])
    writer.writerows(zip(image_ids, y_true, y_pred))
    atomic_write_text(path, text.getvalue())
    return path


def read_test_predictions(run_dir: str | Path) -> tuple[list[str], list[int], list[int]] | None:
    """(image ids, true, predicted) from test_predictions.csv; None for a run without a test split (or older)."""
    path = Path(run_dir) / TEST_PREDICTIONS_FILE
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["image"] for r in rows], [int(r["true"]) for r in rows], [int(r["predicted"]) for r in rows]


def write_seen_images(run_dir: Path, train: list[str], val: list[str]) -> Path:
    """The content hashes (data.content_hash) of the images the run trained on and selected on, sorted, so that
    `evaluate` can tell whether it is given them again."""
    record = {"recipe": "data.content_hash: blake2b (16 bytes) of the file's bytes",
              "train": sorted(set(train)), "val": sorted(set(val))}
    atomic_write_text(Path(run_dir) / SEEN_FILE, json.dumps(record, separators=(",", ":")) + "\n")
    return Path(run_dir) / SEEN_FILE


def read_seen_images(run_dir: str | Path) -> dict[str, set[str]] | None:
    """{'train': hashes, 'val': hashes}, or None for a run older than the record."""
    path = Path(run_dir) / SEEN_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return {"train": set(record["train"]), "val": set(record["val"])}


def cell_dir(out: Path, label: str, seed: int, fold: int | None = None) -> Path:
    """A comparison's run directory: out/runs/<label>-seed<seed>, or <label>-fold<k>-seed<seed> for fold k of a
    cross-validation (see `run_dir`)."""
    if fold is None:
        return run_dir(out, label, seed)
    return Path(out) / "runs" / f"{label.replace(':', '-k')}-fold{fold}-seed{seed}"
