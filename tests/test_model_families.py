"""The model families people fine-tune — ViT/DeiT/DINOv2, ConvNeXt, Swin, EfficientNetV2, RegNet, MobileNetV3,
ResNet — as staged models: loaded from a weights file saved from timm, regrouped to the same function, trained one
step, probed, monitored and exported. Tiny variants of the real architectures keep this fast."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from headstart.analysis.drift import ForgettingMonitor
from headstart.analysis.probe import stage_features
from headstart.backbones import BackboneSpec, load_backbone, register_backbone, timm_builder
from headstart.export import Deployable, write_checked
from headstart.strategies import (
    apply_trainable, describe_strategy, get_strategy, group_learning_rates, parameter_groups, set_train_mode,
    trainable_groups,
)
from headstart.transforms import Preprocessing

# family -> (timm architecture, keyword arguments that shrink it, image size of the test)
FAMILIES = {
    "vit": ("test_vit", {}, 32),  # class-token pooling
    "vit-avg": ("test_vit2", {}, 32),  # mean of the patch tokens, then fc_norm (BEiT/MAE-style)
    "deit": ("deit_tiny_patch16_224", dict(embed_dim=32, depth=3, num_heads=2, img_size=32), 32),
    "dinov2": ("vit_small_patch14_reg4_dinov2", dict(embed_dim=32, depth=3, num_heads=2, img_size=28), 28),  # registers, no head
    "convnext": ("test_convnext", {}, 32),
    "swin": ("swin_tiny_patch4_window7_224", dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1),
                                                  img_size=32, window_size=4), 32),
    "efficientnetv2": ("efficientnetv2_rw_t", dict(num_classes=10), 32),
    "regnet": ("regnetx_002", dict(num_classes=10), 32),
    "mobilenetv3": ("mobilenetv3_small_050", dict(num_classes=10), 32),
    "resnet": ("test_resnet", {}, 32),
}
for _family, (_arch, _kwargs, _size) in FAMILIES.items():
    register_backbone(BackboneSpec(f"tiny-{_family}", timm_builder(_arch, **_kwargs), lambda offline: None,
                                   Preprocessing(_size, (0.5,) * 3, (0.5,) * 3), "timm", f"tiny {_arch} for tests"))


def weights_from_timm(family: str, path) -> torch.nn.Module:
    """A model as timm builds it, its weights saved to `path` the way a user would ship them (safetensors)."""
    arch, kwargs, _ = FAMILIES[family]
    torch.manual_seed(1)
    original = timm.create_model(arch, **kwargs)
    with torch.no_grad():  # not the init headstart would draw itself: a file that was really read shows
        for p in original.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    save_file({k: v.contiguous() for k, v in original.state_dict().items()}, str(path))
    return original.eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_family_loads_a_timm_weights_file_regroups_trains_and_exports(family, tmp_path):
    _, _, size = FAMILIES[family]
    original = weights_from_timm(family, tmp_path / "w.safetensors")
    model = load_backbone(f"tiny-{family}", weights=tmp_path / "w.safetensors").eval()
    assert model.pretrained and model.stage_names[0] == "stem" and len(model.stage_names) >= 4
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in original.parameters())

    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = original(x) if model.num_classes else original.forward_head(original.forward_features(x), pre_logits=True)
        got = model(x) if model.num_classes else model.pool(model.forward_to(x, len(model.stages)))
        assert torch.allclose(got, expected, atol=1e-4), "the regrouped model computes something else"
        for k in range(len(model.stages) + 1):  # the feature cache's premise: a prefix's output feeds back in
            assert torch.allclose(model(model.forward_to(x, k), start=k), model(x), atol=1e-5)
        for out in model.forward_stages(x):  # what the probe and the monitor read, whatever the layout
            assert model.pool(out).shape[0] == 2 and model.pool(out).ndim == 2
            assert model.feature_map(out).ndim == 4

    model.reset_head(3)
    strategy = get_strategy("full")
    trainable = trainable_groups(strategy, model.stage_names, 0)
    apply_trainable(model, trainable)
    set_train_mode(model, trainable, strategy)
    optimizer = torch.optim.AdamW(parameter_groups(model, strategy, 0.01))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    F.cross_entropy(model(x), torch.tensor([0, 2])).backward()
    optimizer.step()
    for name in model.group_names:  # every group trained (and with it every stage's own parameters)
        prefix = "head." if name == "head" else f"stages.{name}."
        assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n.startswith(prefix)), name

    module = Deployable(model.eval())
    batch = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    _, check, _ = write_checked(module, "pt2", tmp_path / "model.pt2", batch, ["random"] * 3, described=False)
    assert check["max_logit_difference"] <= 1e-4 and check["top1_agreement"] == 1.0


def test_a_vit_exports_to_onnx_with_parity(tmp_path):
    pytest.importorskip("onnxruntime")
    model = load_backbone("tiny-vit", pretrained=False)
    model.reset_head(2)
    batch = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    _, check, _ = write_checked(Deployable(model).eval(), "onnx", tmp_path / "m.onnx", batch, ["random"] * 3, False)
    assert check["max_logit_difference"] <= 1e-4


def test_vit_stem_holds_the_tokens_and_blocks_come_in_four_groups():
    model = load_backbone("tiny-deit", pretrained=False)
    stem = model.stages["stem"]
    assert {"cls_token", "pos_embed"} <= {n for n, _ in stem.named_parameters()}
    assert [len(model.layers(g)) for g in model.stage_names] == [1, 1, 1, 1]  # depth 3: three groups of one block
    dinov2 = load_backbone("tiny-dinov2", pretrained=False)
    assert dinov2.num_classes == 0 and dinov2.head.pool.prefix_tokens == 5  # class token + 4 registers, no head
    dinov2.reset_head(4)
    assert dinov2(torch.randn(1, 3, 28, 28)).shape == (1, 4)


def test_layerwise_lr_decay_inside_transformer_groups_and_per_group_for_cnns():
    strategy = get_strategy("full", lr=1e-3, lr_decay=0.5)
    vit = load_backbone("tiny-vit", pretrained=False)  # 6 blocks: groups of 2, 2, 1, 1
    rates = group_learning_rates(strategy, vit.stage_names)
    groups = parameter_groups(vit, strategy, 0.01)
    lrs = {}
    for g in groups:
        lrs.setdefault(g["group"], []).append(g["lr"])
    stage1 = sorted(set(lrs["stage1"]))  # two blocks: the lower one decays half-way toward the group below
    assert stage1 == pytest.approx([rates["stage1"] * 0.5 ** 0.5, rates["stage1"]])
    assert lrs["stage1"][-1] == rates["stage1"]  # the top block last: the group's LR in history.csv
    assert set(lrs["stem"]) == {rates["stem"]} and rates["stage4"] == 1e-3
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(vit.parameters()))  # every parameter once
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert id(vit.stages["stem"].pos_embed) in no_decay and id(vit.stages["stem"].cls_token) in no_decay

    cnn = load_backbone("tiny-resnet", pretrained=False)
    assert {(g["group"], g["lr"]) for g in parameter_groups(cnn, strategy, 0.01)} == set(
        group_learning_rates(strategy, cnn.stage_names).items())


def test_the_plan_says_layernorm_has_no_running_statistics():
    rows = {r["group"]: r["batchnorm"] for r in describe_strategy(get_strategy("partial"), load_backbone("tiny-vit", pretrained=False))}
    assert rows["stage1"].startswith("LayerNorm") and "no running stats" in rows["stage4"]
    rows = {r["group"]: r["batchnorm"] for r in describe_strategy(get_strategy("partial"), load_backbone("tiny-resnet", pretrained=False))}
    assert rows["stem"].startswith("eval")


@pytest.mark.parametrize("family", ["vit", "swin", "convnext"])
def test_probe_features_and_the_forgetting_monitor_read_tokens_and_channels_last_maps(family):
    _, _, size = FAMILIES[family]
    reference = load_backbone(f"tiny-{family}", pretrained=False)
    pixels = np.random.default_rng(0).integers(0, 255, (6, size + 4, size + 4, 3), dtype=np.uint8)
    features = stage_features(reference, pixels, reference.preprocessing)
    assert len(features) == len(reference.stages) and all(f.shape[0] == 6 and f.ndim == 2 for f in features)
    monitor = ForgettingMonitor(reference, pixels)
    model = load_backbone(f"tiny-{family}", pretrained=False)
    model.load_state_dict(reference.state_dict())
    row = monitor(model, 1)
    assert all(row[f"cka_{g}"] == pytest.approx(1.0, abs=1e-6) for g in model.stage_names)  # unchanged: same features
    with torch.no_grad():
        model.stages[model.stage_names[-1]].apply(lambda m: [p.mul_(-1) for p in m.parameters(recurse=False)])
    row = monitor(model, 2)
    assert row[f"drift_{model.stage_names[-1]}"] > 0.5 and row[f"drift_{model.stage_names[0]}"] == 0.0
