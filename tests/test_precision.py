"""--precision: detected, not guessed; recorded; part of the feature cache key; bf16 close to fp32."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import headstart.precision as precision
from headstart.api import train
from headstart.cli import app
from headstart.errors import HeadstartError
from headstart.features import features_key, prefix_activations
from headstart.precision import AUTO_BF16, precision_plan, resolve_precision
from headstart.train import TrainConfig
from test_features import model  # noqa: F401 (a fixture: the tiny random model test_features uses)

CPU = torch.device("cpu")


@pytest.fixture
def cpu_with_bf16(monkeypatch):
    """A CPU that reports AVX512-BF16 (autocast still works where it is emulated: only slower)."""
    monkeypatch.setattr(precision, "cpu_bf16_feature", lambda: "avx512_bf16")


@pytest.fixture
def cpu_without_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_feature", lambda: None)


@pytest.fixture(scope="module")
def pixels():
    return np.random.default_rng(0).integers(0, 256, (6, 36, 36, 3), dtype=np.uint8)


def test_the_detector_reads_the_cpu_capabilities(monkeypatch):
    caps = {"avx512_bf16": True, "amx_bf16": False}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    assert precision.cpu_bf16_feature() == "avx512_bf16"
    caps.update(avx512_bf16=False)
    assert precision.cpu_bf16_feature() is None


def test_auto_is_bf16_only_where_the_cpu_has_it_and_parity_held(cpu_with_bf16):
    assert precision_plan("auto", CPU) == {use: "bf16" if AUTO_BF16["cpu"][use] else "fp32" for use in ("inference", "training")}
    assert precision_plan("fp32", CPU) == {"inference": "fp32", "training": "fp32"}
    assert precision_plan("bf16", CPU) == {"inference": "bf16", "training": "bf16"}


def test_auto_decides_each_use_on_its_own(cpu_with_bf16, monkeypatch):
    monkeypatch.setitem(AUTO_BF16, "cpu", {"inference": True, "training": False})  # parity held for inference only
    assert precision_plan("auto", CPU) == {"inference": "bf16", "training": "fp32"}


def test_without_bf16_auto_is_fp32_and_bf16_is_refused(cpu_without_bf16):
    assert precision_plan("auto", CPU) == {"inference": "fp32", "training": "fp32"}
    with pytest.raises(HeadstartError, match="no native bfloat16"):
        resolve_precision("bf16", CPU)
    with pytest.raises(HeadstartError, match="--precision must be one of"):
        resolve_precision("fp16", CPU)


def test_bf16_on_a_cpu_without_it_is_one_line_and_exit_2(cpu_without_bf16, image_folder, tmp_path):
    result = CliRunner().invoke(app, ["train", str(image_folder), "--model", "test_efficientnet", "--epochs", "1",
                                      "--precision", "bf16", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "--precision bf16" in result.output
    assert not (tmp_path / "run" / "config.json").exists()  # refused before any work


def test_the_cache_key_follows_the_precision(model, pixels, tmp_path, cpu_with_bf16):
    pre, n = model.preprocessing, len(model.stages)
    keys = {p: features_key(model, n, pre, "k", 0, 0, None, p) for p in ("fp32", "bf16")}
    assert keys["fp32"] != keys["bf16"]
    fp32 = prefix_activations(model, pixels, n, pre, CPU, source_key="k", cache_dir=tmp_path, precision="fp32")
    bf16 = prefix_activations(model, pixels, n, pre, CPU, source_key="k", cache_dir=tmp_path, precision="bf16")
    assert len(list((tmp_path / "features").glob("*.npy"))) == 2  # bf16 did not read fp32's entry
    assert not torch.equal(fp32, bf16)


@pytest.mark.parametrize("start", [2, None])  # a feature map half-way, and the pooled features of the whole backbone
def test_bf16_features_are_close_to_fp32(model, pixels, start):
    start = start or len(model.stages)
    fp32 = prefix_activations(model, pixels, start, model.preprocessing, CPU, use_cache=False, precision="fp32")
    bf16 = prefix_activations(model, pixels, start, model.preprocessing, CPU, use_cache=False, precision="bf16")
    assert bf16.dtype == torch.float32  # kept in fp32: what trains on them is fp32
    relative = (bf16 - fp32).norm() / fp32.norm()
    assert 0 < relative < 0.03  # bf16's 8-bit mantissa: ~0.4% per rounding, a few percent after several layers


def test_precision_is_recorded_in_config_and_run(image_folder, tmp_path, cpu_with_bf16):
    for requested in ("fp32", "bf16"):
        run = train(image_folder, TrainConfig(model="test_efficientnet", strategy="partial", epochs=1,
                                              precision=requested, use_cache=False, num_workers=0),
                    tmp_path / requested)
        config = json.loads((tmp_path / requested / "config.json").read_text())
        assert config["train"]["precision"] == requested
        assert config["precision"] == run["precision"] == {"inference": requested, "training": requested}


def test_a_finished_run_is_not_reused_when_auto_now_resolves_to_another_precision(image_folder, tmp_path):
    """`auto` follows the parity measured per machine, so a run that auto made in fp32 is another experiment
    once auto means bf16 here: compare must not mix it with new cells."""
    from headstart.compare import is_finished

    cfg = TrainConfig(model="test_efficientnet", strategy="linear", epochs=1, use_cache=False, num_workers=0)
    train(image_folder, cfg, tmp_path / "run")
    assert is_finished(tmp_path / "run", cfg)
    config_file = tmp_path / "run" / "config.json"
    config = json.loads(config_file.read_text())
    other = {"inference": "bf16" if config["precision"]["inference"] == "fp32" else "fp32",
             "training": config["precision"]["training"]}
    config_file.write_text(json.dumps({**config, "precision": other}))
    with pytest.raises(HeadstartError, match="precision as resolved"):
        is_finished(tmp_path / "run", cfg)
