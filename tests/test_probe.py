"""Linear probes per stage group and the BatchNorm-statistics domain similarity, on the tiny test model."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from headstart.analysis.probe import (BatchNormStatistics, domain_similarity, fit_logistic, linear_probe, probe,
                                     stage_features, stratified_folds)
from headstart.data import load_data
from headstart.backbones import load_backbone
from headstart.transforms import Preprocessing

from conftest import needs_shared


def coloured(root, n_train=12, n_val=6, size=40):
    """Two classes told apart by colour (reddish vs bluish noise): easy for any features."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for c, channel in (("red", 0), ("blue", 2)):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 120, (size, size, 3), dtype=np.uint8)
                img[..., channel] += 120
                Image.fromarray(img).save(root / split / c / f"{i}.png")
    return root


def test_linear_probe_separates_separable_features_and_not_noise():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(120) % 3
    centres = torch.randn(3, 20, generator=g) * 3
    x = centres[y] + torch.randn(120, 20, generator=g)
    good = linear_probe(x[:90], y[:90], x[90:], y[90:], 3)
    assert good["cv_accuracy"] > 0.95 and good["val_accuracy"] > 0.95
    noise = torch.randn(120, 20, generator=g)
    bad = linear_probe(noise[:90], y[:90], noise[90:], y[90:], 3)
    assert bad["val_accuracy"] < 0.6


def test_stratified_folds_spread_each_class():
    y = torch.tensor([0] * 10 + [1] * 5)
    fold = stratified_folds(y, 5)
    for f in range(5):
        assert (y[fold == f] == 0).sum() == 2 and (y[fold == f] == 1).sum() == 1


def test_similarity_is_one_on_the_data_the_statistics_came_from():
    """BatchNorm running stats computed on a data set make that data set look identical (KL ~ 0);
    the same images much darker do not."""
    torch.manual_seed(0)
    model = load_backbone("test_efficientnet", pretrained=False)
    pre = Preprocessing(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), crop_pct=1.0)
    pixels = (np.random.default_rng(0).random((64, 32, 32, 3)) * 100 + 100).astype(np.uint8)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: the running stats become this data's own statistics
    model.train()
    with torch.no_grad():
        from headstart.transforms import normalize_batch

        model(normalize_batch(torch.from_numpy(pixels).permute(0, 3, 1, 2), pre))
    for darker in (False, True):
        with BatchNormStatistics(model) as bn:
            feats = stage_features(model, pixels // 4 if darker else pixels, pre)
            kls = bn.kl_per_layer()
        assert len(feats) == len(model.stage_names) and feats[0].shape[0] == 64
        stem = [kl for stage, kl in kls if stage == "stem"]
        if darker:
            assert np.exp(-np.median(stem)) < 0.5
        else:
            assert np.exp(-max(kl for _, kl in kls)) > 0.98


def test_probe_end_to_end(tmp_path):
    report = probe(coloured(tmp_path), model="test_efficientnet", image_size=32, folds=3)
    assert [s.stage for s in report.stages] == load_backbone("test_efficientnet", pretrained=False).stage_names
    assert report.n_train == 24 and report.n_val == 12
    assert report.last.val_accuracy >= 0.9  # colour separates the classes at any depth
    assert all(0 <= s.cv_accuracy <= 1 and s.similarity is not None and 0 < s.similarity <= 1 for s in report.stages)
    d = report.to_dict()
    assert d["best_stage"] in [s.stage for s in report.stages]


def test_domain_similarity_alone_measures_what_the_probe_measures(tmp_path):
    """compare places its data in the lesson's 2 × 2 with this forward pass alone: on the same train images it must
    give the probe's own low- and high-level similarity."""
    data = coloured(tmp_path)
    model = load_backbone("test_efficientnet")
    model.pretrained = True  # its (random) BatchNorm statistics stand in for ImageNet's: the arithmetic is the point
    report = probe(data, model=model, image_size=32, folds=3)
    splits = load_data(data, val_fraction=0.2, seed=0)
    low, high = domain_similarity(model, splits.train, image_size=32)
    assert (low, high) == pytest.approx((report.similarity("low"), report.similarity("high")), rel=1e-6)
    assert domain_similarity(load_backbone("test_efficientnet", pretrained=False), splits.train) == (None, None)


def test_cli_probe_writes_json_and_plot(tmp_path):
    from headstart.cli import app

    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["probe", str(coloured(tmp_path / "data")), "--model", "test_efficientnet",
                                      "--image-size", "32", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert len(report["stages"]) == 6
    assert (out / "probe.png").stat().st_size > 1000 and (out / "probe.json").is_file()


@pytest.mark.slow
def test_probe_on_hymenoptera_rises_with_depth():
    """The Yosinski picture on real data: later features separate ants from bees better."""
    report = probe(needs_shared("hymenoptera"), image_size=128)
    acc = [s.val_accuracy for s in report.stages]
    assert acc[-1] > 0.85 and acc[-1] > acc[0] + 0.15
    assert report.similarity("low") > 0.9  # hymenoptera is a corner of ImageNet


def test_the_probe_leaves_the_callers_random_state_alone():
    # a run's randomness must depend on its own seed only: the probe used to re-seed the global generator
    x, y = torch.randn(40, 8, generator=torch.Generator().manual_seed(1)), torch.arange(40) % 2
    before = torch.get_rng_state()
    linear_probe(x[:30], y[:30], x[30:], y[30:], 2, folds=3)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_the_probes_regression_minimises_mean_cross_entropy_plus_half_l2(num_classes):
    """The L2 grid means the same for any number of images and classes: scikit-learn's fit is the minimum of
    mean cross-entropy + l2/2 * ||W||^2 of a softmax regression on the standardised features (bias unpenalised)."""
    g = torch.Generator().manual_seed(num_classes)
    y = torch.arange(60) % num_classes
    x = (torch.randn(60, 5, generator=g) + y[:, None]).double()  # overlapping classes: a finite optimum
    l2 = 0.1
    fitted = fit_logistic(x.numpy(), y.numpy(), l2)
    z = torch.from_numpy(fitted[0].transform(x.numpy()))
    w, b = torch.from_numpy(fitted[-1].coef_), torch.from_numpy(fitted[-1].intercept_)
    if num_classes == 2:  # one vector for the logit difference: the softmax's two rows are -v/2 and v/2
        w, b = torch.cat([-w / 2, w / 2]), torch.cat([-b / 2, b / 2])
    w.requires_grad_(), b.requires_grad_()
    (torch.nn.functional.cross_entropy(z @ w.T + b, y) + l2 * w.pow(2).sum() / 2).backward()
    assert w.grad.abs().max() < 1e-5 and b.grad.abs().max() < 1e-5
    assert w.abs().max() > 0.05  # a real fit, not the zero solution
