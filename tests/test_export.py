"""Export: one file that predicts what `headstart predict` predicts, without headstart, at any batch size."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from headstart.api import export, predict, train
from headstart.cli import app
from headstart.errors import HeadstartError
from headstart.export import export_lock_path, preprocess_as_sidecar_says
from headstart.files import InUse
from headstart.train import TrainConfig

from conftest import needs_shared
from helpers import TINY
from test_files import children  # noqa: F401 (a fixture)


@pytest.fixture
def run_dir(image_folder, tmp_path):
    train(image_folder, TrainConfig(model=TINY, strategy="partial", epochs=2, num_workers=0, use_cache=False),
          tmp_path / "run")
    return tmp_path / "run"


def test_onnx_export_predicts_what_headstart_predicts(run_dir, image_folder):
    ort = pytest.importorskip("onnxruntime")
    result = export(run_dir)
    assert result["path"] == str(run_dir / "model.onnx") and (run_dir / "model.onnx.json").is_file()
    sidecar = json.loads((run_dir / "model.onnx.json").read_text())
    assert sidecar["classes"] == ["blue", "red"] and sidecar["check"]["max_logit_difference"] < 1e-4

    files = sorted((image_folder / "val").rglob("*.png"))
    batch = preprocess_as_sidecar_says(files, run_dir / "model.onnx.json")  # the side files alone
    session = ort.InferenceSession(str(run_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    logits, probabilities = session.run(["logits", "probabilities"], {"images": batch})
    expected = predict(run_dir, files)
    assert [sidecar["classes"][i] for i in probabilities.argmax(1)] == [r["label"] for r in expected]
    np.testing.assert_allclose(probabilities.max(1), [r["probability"] for r in expected], atol=1e-4)
    np.testing.assert_allclose(probabilities, torch.from_numpy(logits).softmax(1).numpy(), atol=1e-6)


def test_pt2_export_runs_any_batch_size_without_headstart(run_dir):
    export(run_dir, run_dir / "model.pt2")
    program = torch.export.load(str(run_dir / "model.pt2")).module()  # plain torch: no headstart, no timm
    sidecar = json.loads((run_dir / "model.pt2.json").read_text())
    assert sidecar["sha256"] == hashlib.sha256((run_dir / "model.pt2").read_bytes()).hexdigest()  # the pair matches
    size = sidecar["input"]["image_size"]
    for n in (1, 5):
        logits, probabilities = program(torch.rand(n, 3, size, size))
        assert logits.shape == probabilities.shape == (n, 2)
        assert torch.allclose(probabilities.sum(1), torch.ones(n), atol=1e-5)


def files_in(folder) -> dict[str, bytes]:
    """What a folder holds, bar lock files (they coordinate writers and hold no data)."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.suffix != ".lock"}


def break_the_pt2_loader(monkeypatch):
    from headstart import export as export_module

    write, _ = export_module.WRITERS["pt2"]
    wrong = lambda path: lambda images: np.zeros((len(images), 2), dtype=np.float32) + 5.0  # noqa: E731
    monkeypatch.setitem(export_module.WRITERS, "pt2", (write, wrong))


def test_an_export_that_disagrees_with_pytorch_is_not_written(run_dir, monkeypatch):
    before = files_in(run_dir)
    break_the_pt2_loader(monkeypatch)
    with pytest.raises(HeadstartError, match="disagrees"):
        export(run_dir, run_dir / "model.pt2")
    assert files_in(run_dir) == before  # not the file, not its sidecar, not the temp it was checked under


def test_a_failed_export_keeps_the_previous_one_and_its_sidecar(run_dir, monkeypatch):
    export(run_dir, run_dir / "model.pt2")
    before = files_in(run_dir)
    break_the_pt2_loader(monkeypatch)
    with pytest.raises(HeadstartError, match="disagrees"):
        export(run_dir, run_dir / "model.pt2")
    assert files_in(run_dir) == before and {"model.pt2", "model.pt2.json"} <= set(before)


@pytest.mark.parametrize("target, message", [("model.h5", "name the file .onnx or .pt2"), (None, "not a run directory")])
def test_bad_export_requests_say_what_to_do(run_dir, tmp_path, target, message):
    result = CliRunner().invoke(app, ["export", str(run_dir if target else tmp_path / "nope"),
                                      *(["--out", str(tmp_path / target)] if target else [])])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_lite0_with_tf_same_padding_exports_to_onnx_and_agrees_on_real_photos(tmp_path):
    """TensorFlow "same" padding is computed from the input size in Python: the exported graph must fix it
    for the model's size and still give headstart's own predictions on real photos."""
    pytest.importorskip("onnxruntime")
    data = needs_shared("hymenoptera")
    train(data, TrainConfig(strategy="linear", epochs=1, image_size=64, num_workers=0), tmp_path / "run",
          per_class=8)
    result = CliRunner().invoke(app, ["export", str(tmp_path / "run"), "--check", str(data / "val" / "ants"),
                                      "--json"])
    assert result.exit_code == 0, result.output
    check = json.loads(result.stdout)["check"]
    assert check["n"] >= 60 and check["top1_agreement"] == 1.0 and check["max_logit_difference"] < 1e-3


def test_an_export_cut_short_before_its_sidecar_never_pairs_with_the_old_sidecar(run_dir, monkeypatch):
    from headstart import export as export_module

    export(run_dir, run_dir / "model.pt2")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process stops between the new file and its sidecar

    monkeypatch.setattr(export_module, "atomic_write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        export(run_dir, run_dir / "model.pt2")
    assert (run_dir / "model.pt2").is_file() and not (run_dir / "model.pt2.json").exists()


HOLD_LOCK = """
import sys
from headstart.files import exclusive
with exclusive(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_a_second_export_to_the_same_file_stops_at_once_naming_the_first(run_dir, children):
    out = run_dir / "model.pt2"
    first = children(HOLD_LOCK, export_lock_path(out))  # an export of another process, writing `out` right now
    first.expect("held")
    before = files_in(run_dir)
    with pytest.raises(InUse, match=f"model.pt2 is in use by another headstart process \\(pid {first.pid}\\)"):
        export(run_dir, out)
    assert files_in(run_dir) == before
