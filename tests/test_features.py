"""The frozen-prefix feature cache: same numbers as the uncached path, hit on a second run, views."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import headstart.features as features
from headstart.api import train
from headstart.backbones import load_backbone
from headstart.cli import app
from headstart.features import inference_batch_size, prefix_activations
from headstart.runs import read_history
from headstart.train import TrainConfig
from headstart.transforms import normalize_batch, train_transform

from test_cache import make_folder
from test_files import children  # noqa: F401 (a fixture)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = load_backbone("test_efficientnet", pretrained=False)
    m.reset_head(2)
    return m.eval()


@pytest.fixture(scope="module")
def pixels():
    return np.random.default_rng(0).integers(0, 256, (5, 36, 36, 3), dtype=np.uint8)  # store of 36 -> crop 32


def full_logits(model, pixels):
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2)[:, :, 2:34, 2:34]  # the centre crop
    with torch.no_grad():
        return model(normalize_batch(x, model.preprocessing))


@pytest.fixture
def count_forwards(monkeypatch):
    calls = []
    real = features.run_prefix
    monkeypatch.setattr(features, "run_prefix", lambda *a: calls.append(len(a[1])) or real(*a))
    return calls


def test_pooled_features_give_the_same_logits(model, pixels, tmp_path):
    pre = model.preprocessing
    feats = prefix_activations(model, pixels, len(model.stages), pre, CPU, source_key="k", cache_dir=tmp_path)
    assert feats.shape == (5, model.num_features)
    with torch.no_grad():
        torch.testing.assert_close(model(feats, start=len(model.stages)), full_logits(model, pixels), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("start", [1, 3])
def test_feature_maps_give_the_same_logits(model, pixels, start):
    acts = prefix_activations(model, pixels, start, model.preprocessing, CPU, use_cache=False, batch_size=2)
    assert acts.ndim == 4 and len(acts) == 5
    with torch.no_grad():
        torch.testing.assert_close(model(acts, start=start), full_logits(model, pixels), atol=1e-5, rtol=1e-4)


def test_second_call_loads_from_disk(model, pixels, tmp_path, count_forwards):
    pre, n = model.preprocessing, len(model.stages)
    first = prefix_activations(model, pixels, n, pre, CPU, source_key="k", cache_dir=tmp_path)
    ran = len(count_forwards)
    assert ran > 0 and len(list((tmp_path / "features").glob("*.npy"))) == 1
    second = prefix_activations(model, pixels, n, pre, CPU, source_key="k", cache_dir=tmp_path)
    assert len(count_forwards) == ran  # not one image through the backbone
    torch.testing.assert_close(first, second, atol=0, rtol=0)
    prefix_activations(model, pixels, n, pre, CPU, source_key="other pixels", cache_dir=tmp_path)
    prefix_activations(model, pixels, n - 1, pre, CPU, source_key="k", cache_dir=tmp_path)  # another cut
    assert len(list((tmp_path / "features").glob("*.npy"))) == 3


def test_key_follows_the_weights(pixels, tmp_path, count_forwards):
    def build(seed):
        torch.manual_seed(seed)
        return load_backbone("test_efficientnet", pretrained=False).eval()

    a, b = build(0), build(1)
    n = len(a.stages)
    fa = prefix_activations(a, pixels, n, a.preprocessing, CPU, source_key="k", cache_dir=tmp_path)
    fb = prefix_activations(b, pixels, n, b.preprocessing, CPU, source_key="k", cache_dir=tmp_path)
    assert not torch.allclose(fa, fb)  # same name, same pixels, other weights: not a stale hit
    with torch.no_grad():
        b.stages[b.stage_names[-1]].requires_grad_(False)
        torch.nn.init.zeros_(next(b.head.parameters()))  # the head is no part of the prefix: still a hit
    calls = len(count_forwards)
    prefix_activations(b, pixels, n, b.preprocessing, CPU, source_key="k", cache_dir=tmp_path)
    assert len(count_forwards) == calls


def test_no_cache_writes_nothing(model, pixels, tmp_path):
    prefix_activations(model, pixels, len(model.stages), model.preprocessing, CPU, source_key="k", cache_dir=tmp_path,
                       use_cache=False)
    assert not tmp_path.joinpath("features").exists()


def test_a_truncated_entry_is_computed_again(model, pixels, tmp_path, count_forwards):
    pre, n = model.preprocessing, len(model.stages)
    first = prefix_activations(model, pixels, n, pre, CPU, source_key="k", cache_dir=tmp_path).clone()
    ran = len(count_forwards)
    (entry,) = (tmp_path / "features").glob("*.npy")
    with open(entry, "r+b") as f:
        f.truncate(entry.stat().st_size - 4)  # one float short
    again = prefix_activations(model, pixels, n, pre, CPU, source_key="k", cache_dir=tmp_path)
    assert len(count_forwards) == 2 * ran  # through the backbone again, not garbage from disk
    torch.testing.assert_close(again, first, atol=0, rtol=0)
    prefix_activations(model, pixels, n, pre, CPU, source_key="k", cache_dir=tmp_path)
    assert len(count_forwards) == 2 * ran  # the rebuilt entry is whole


FILL_FEATURES = """
import json, sys
import numpy as np, torch
from headstart.backbones import load_backbone
from headstart.features import prefix_activations

cache_dir, role, result = sys.argv[1:4]
torch.manual_seed(0)
model = load_backbone("test_efficientnet", pretrained=False).eval()
pixels = np.random.default_rng(0).integers(0, 256, (5, 36, 36, 3), dtype=np.uint8)
forwards = []

def hold(module, args):
    if role == "first" and not forwards:
        print("computing", flush=True)
        sys.stdin.readline()  # holds the entry's lock, mid-fill, until the test says go
    forwards.append(len(args[0]))

model.stages[model.stage_names[0]].register_forward_pre_hook(hold)
feats = prefix_activations(model, pixels, len(model.stages), model.preprocessing, torch.device("cpu"),
                           source_key="k", cache_dir=cache_dir)
np.save(result, feats.numpy())
print("done", json.dumps({"forwards": len(forwards)}), flush=True)
"""


def test_two_processes_filling_one_entry_run_the_backbone_once_and_agree(tmp_path, children):
    first = children(FILL_FEATURES, tmp_path / "c", "first", tmp_path / "first.npy")
    first.expect("computing")
    second = children(FILL_FEATURES, tmp_path / "c", "second", tmp_path / "second.npy")
    assert f"pid {first.pid}" in second.expect("waiting for another headstart process")
    first.send()
    forwards = [json.loads(child.expect("done").split(" ", 1)[1])["forwards"] for child in (first, second)]
    assert first.finish() == 0 and second.finish() == 0
    assert forwards[0] > 0 and forwards[1] == 0  # the second read the first's entry
    np.testing.assert_array_equal(np.load(tmp_path / "first.npy"), np.load(tmp_path / "second.npy"))
    assert sorted(p.suffix for p in (tmp_path / "c" / "features").iterdir()) == [".json", ".lock", ".npy"]


def test_views_shape_determinism_and_rng(model, pixels):
    pre = model.preprocessing
    aug = train_transform(pre, "light")
    kwargs = dict(views=3, augment_transform=aug, augment="light", use_cache=False)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = prefix_activations(model, pixels, len(model.stages), pre, CPU, seed=7, batch_size=2, **kwargs)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's random stream is untouched
    assert a.shape == (3, 5, model.num_features)
    b = prefix_activations(model, pixels, len(model.stages), pre, CPU, seed=7, batch_size=5, **kwargs)
    torch.testing.assert_close(a, b)  # the same views whatever the batch size
    c = prefix_activations(model, pixels, len(model.stages), pre, CPU, seed=8, **kwargs)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a[0], a[1])  # views differ from one another


def test_inference_batch_size_scales_with_pixels():
    assert inference_batch_size(224) == 16 and inference_batch_size(448) == 4 and inference_batch_size(32) == 128
    assert inference_batch_size(224, "cuda") == 128


# --------------------------------------------------------------------------- through fit: same run, cached or not
def tiny_config(tmp_path, **kw) -> TrainConfig:
    return TrainConfig(model="test_efficientnet", strategy="linear", epochs=3, batch_size=4, image_size=32, seed=0,
                       cache_dir=str(tmp_path / "cache"), patience=None, **kw)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_folder(root / "train", per_class=5)
    make_folder(root / "val", per_class=2)
    return root


def test_linear_history_same_with_and_without_feature_cache(data, tmp_path, monkeypatch):
    cached = train(data, tiny_config(tmp_path), tmp_path / "cached")
    monkeypatch.setattr(features, "MAX_CACHE_BYTES", 0)  # forces the uncached path: the backbone runs every epoch
    streamed = train(data, tiny_config(tmp_path, use_cache=False), tmp_path / "streamed")
    h1, h2 = read_history(tmp_path / "cached" / "history.csv"), read_history(tmp_path / "streamed" / "history.csv")
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose([r[key] for r in h1], [r[key] for r in h2], rtol=1e-4, atol=1e-5, err_msg=key)
    assert cached["val_metrics"]["confusion_matrix"] == streamed["val_metrics"]["confusion_matrix"]


def test_second_run_decodes_and_forwards_nothing(data, tmp_path, monkeypatch, count_forwards):
    import headstart.cache as cache

    decodes = []
    real = cache.read_store
    monkeypatch.setattr(cache, "read_store", lambda *args: [real(*args), decodes.append(1)][0])  # decodes that worked
    first = train(data, tiny_config(tmp_path), tmp_path / "one")
    assert len(decodes) == 14 and sum(count_forwards) >= 14
    decodes.clear(), count_forwards.clear()
    second = train(data, tiny_config(tmp_path), tmp_path / "two")
    assert decodes == [] and count_forwards == []
    assert second["best_val_accuracy"] == first["best_val_accuracy"]


def test_cli_cache_dir_env_and_no_cache(data, tmp_path, monkeypatch):
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "env"))
    base = ["train", str(data), "--model", "test_efficientnet", "--epochs", "1", "--image-size", "32"]
    runner = CliRunner()
    assert runner.invoke(app, [*base, "--out", str(tmp_path / "r1")]).exit_code == 0
    assert list((tmp_path / "env" / "features").glob("*.npy")) and list((tmp_path / "env" / "decoded").glob("*.npy"))
    assert runner.invoke(app, [*base, "--out", str(tmp_path / "r2"), "--cache-dir", str(tmp_path / "flag")]).exit_code == 0
    assert list((tmp_path / "flag" / "features").glob("*.npy"))
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "r3"), "--cache-dir", str(tmp_path / "off"), "--no-cache"])
    assert result.exit_code == 0 and not (tmp_path / "off").exists()
