"""What each strategy trains, at which LR, and what stays untouched: checked after real optimizer steps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from headstart.backbones import HEAD
from headstart.strategies import (
    STRATEGIES, get_strategy, group_learning_rates, parameter_groups, trainable_groups,
)
from headstart.train import fit, make_optimizer

from helpers import one_step_config, splits_for, tiny_model


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed_groups(model, before) -> set[str]:
    """Groups with any parameter or buffer (BN running stats included) that differs from `before`."""
    after = model.state_dict()
    changed = set()
    for key, value in after.items():
        if "num_batches_tracked" in key:
            continue
        if not torch.equal(value, before[key]):
            changed.add(HEAD if key.startswith("head.") else key.split(".")[1])
    return changed


def bn_stats(model, group):
    return [(m.running_mean.clone(), m.running_var.clone()) for m in model.group(group).modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def train_one_step(image_folder, strategy, **overrides):
    model = tiny_model()
    train, val = splits_for(image_folder, model)
    before = snapshot(model)
    fit(model, strategy, train, val, one_step_config(augment="light", **overrides))
    return model, before


def test_linear_changes_only_the_head_and_no_batchnorm_statistic(image_folder):
    model, before = train_one_step(image_folder, get_strategy("linear"))
    assert changed_groups(model, before) == {HEAD}


@pytest.mark.parametrize("k", [1, 2])
def test_partial_changes_exactly_the_last_k_groups_and_the_head(image_folder, k):
    model, before = train_one_step(image_folder, get_strategy("partial", train_last=k))
    assert changed_groups(model, before) == {*model.stage_names[-k:], HEAD}


def test_with_train_bn_frozen_groups_keep_running_stats_while_trained_groups_update(image_folder):
    model = tiny_model()
    train, val = splits_for(image_folder, model)
    stem_before, top_before = bn_stats(model, "stem"), bn_stats(model, model.stage_names[-1])
    fit(model, get_strategy("partial", train_last=1, train_bn_stats=True), train, val, one_step_config(augment="light"))
    for (m0, v0), (m1, v1) in zip(stem_before, bn_stats(model, "stem")):
        assert torch.equal(m0, m1) and torch.equal(v0, v1)
    assert any(not torch.equal(m0, m1) for (m0, _), (m1, _) in zip(top_before, bn_stats(model, model.stage_names[-1])))


def test_full_changes_every_group(image_folder):
    model, before = train_one_step(image_folder, get_strategy("full"))
    assert changed_groups(model, before) == set(model.group_names)


def test_param_group_learning_rates_follow_the_spec():
    model = tiny_model()
    strategy = get_strategy("full", lr=1e-3, head_lr=1e-2, lr_decay=0.5)
    optimizer = make_optimizer("adamw", parameter_groups(model, strategy, weight_decay=0.05))
    names = model.stage_names
    expected = {name: 1e-3 * 0.5 ** (len(names) - 1 - i) for i, name in enumerate(names)} | {HEAD: 1e-2}
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(expected[group["group"]])
        assert group["weight_decay"] == (0.0 if all(p.ndim <= 1 for p in group["params"]) else 0.05)
    assert group_learning_rates(strategy, names)["stem"] < group_learning_rates(strategy, names)[names[-1]] < 1e-2
    covered = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert covered == {id(p) for p in model.parameters()}  # every parameter is in exactly one group


def test_recorded_learning_rates_match_the_groups(image_folder):
    """history's lr_<group> columns hold each group's LR (0 when frozen)."""
    model = tiny_model()
    train, val = splits_for(image_folder, model)
    strategy = get_strategy("partial", train_last=1, lr=1e-3, head_lr=1e-2)
    result = fit(model, strategy, train, val, one_step_config(warmup_epochs=0))
    row = result.history[0]
    assert row[f"lr_{HEAD}"] == pytest.approx(1e-2) and row[f"lr_{model.stage_names[-1]}"] == pytest.approx(1e-3)
    assert row["lr_stem"] == 0.0


def test_gradual_unfreezes_one_group_per_phase(image_folder):
    strategy = get_strategy("gradual", unfreeze_every=1)
    names = tiny_model().stage_names
    assert trainable_groups(strategy, names, 0) == [HEAD]
    assert trainable_groups(strategy, names, 1) == [names[-1], HEAD]
    assert trainable_groups(strategy, names, 2) == [names[-2], names[-1], HEAD]
    assert trainable_groups(strategy, names, 99) == [*names, HEAD]

    model = tiny_model()
    train, val = splits_for(image_folder, model)
    result = fit(model, strategy, train, val, one_step_config(epochs=3))
    assert [row["trainable"] for row in result.history] == [
        HEAD, f"{names[-1]}+{HEAD}", f"{names[-2]}+{names[-1]}+{HEAD}"]


def test_lp_ft_probes_then_unfreezes_everything():
    strategy = get_strategy("lp-ft")
    names = tiny_model().stage_names
    first_ft = strategy.phases[1].start_epoch
    assert trainable_groups(strategy, names, first_ft - 1) == [HEAD]
    assert trainable_groups(strategy, names, first_ft) == [*names, HEAD]


def test_scratch_starts_from_random_weights_of_the_same_architecture(tmp_path):
    from headstart.pipeline import build_model
    from headstart.train import TrainConfig

    cfg = TrainConfig(model="efficientnet_lite0", strategy="scratch")
    scratch = build_model(cfg, get_strategy("scratch"), 3)
    pretrained = build_model(TrainConfig(model="efficientnet_lite0"), get_strategy("linear"), 3)
    assert not scratch.pretrained and pretrained.pretrained
    assert [k for k in scratch.state_dict()] == [k for k in pretrained.state_dict()]
    assert all(a.shape == b.shape for a, b in zip(scratch.state_dict().values(), pretrained.state_dict().values()))
    stem_w = "stages.stem.conv_stem.weight"
    assert not torch.allclose(scratch.state_dict()[stem_w], pretrained.state_dict()[stem_w])


def test_every_strategy_is_plain_data():
    for name, strategy in STRATEGIES.items():
        assert type(strategy).from_dict(strategy.to_dict()) == strategy, name


@pytest.mark.parametrize("name", ["partial", "full", "gradual", "lp-ft"])
def test_pretrained_strategies_keep_every_running_stat_by_default(name):
    assert not get_strategy(name).train_bn_stats and get_strategy("scratch").train_bn_stats


def test_freeze_bn_keeps_every_running_stat_while_trained_weights_move(image_folder):
    """The default (--freeze-bn): trained groups learn their weights (BN affine too) but keep the pretrained
    statistics."""
    model = tiny_model()
    train, val = splits_for(image_folder, model)
    top = model.stage_names[-1]
    stats_before = {g: bn_stats(model, g) for g in model.stage_names}
    weight_before = snapshot(model)
    fit(model, get_strategy("partial", train_last=1), train, val, one_step_config(augment="light"))
    for g in model.stage_names:
        for (m0, v0), (m1, v1) in zip(stats_before[g], bn_stats(model, g)):
            assert torch.equal(m0, m1) and torch.equal(v0, v1), g
    moved = [k for k, v in model.state_dict().items() if k.startswith(f"stages.{top}.") and "running" not in k
             and "num_batches" not in k and not torch.equal(v, weight_before[k])]
    assert moved


def test_train_bn_and_freeze_bn_override_the_strategy_default():
    from headstart.train import TrainConfig, resolve_strategy

    assert resolve_strategy(TrainConfig(strategy="partial", freeze_bn=False)).train_bn_stats  # --train-bn
    assert not resolve_strategy(TrainConfig(strategy="partial")).train_bn_stats
    assert resolve_strategy(TrainConfig(strategy="scratch")).train_bn_stats


def test_scratch_with_frozen_batchnorm_statistics_is_refused():
    # random-init BatchNorm keeps mean 0 / var 1 if it never learns its statistics: a network that cannot work
    from headstart.errors import HeadstartError
    from headstart.train import TrainConfig, resolve_strategy

    with pytest.raises(HeadstartError, match="random weights.*--freeze-bn"):
        resolve_strategy(TrainConfig(strategy="scratch", freeze_bn=True))


def test_views_are_cached_only_for_a_prefix_frozen_for_the_whole_run():
    from headstart.train import default_views

    assert default_views(get_strategy("linear"), 10, "light") == 8  # the head trains in no time: many views
    assert default_views(get_strategy("partial"), 8, "light") == 4  # one view per two epochs
    assert default_views(get_strategy("partial", train_last=3), 2, "strong") == 2
    assert default_views(get_strategy("linear"), 10, "none") == 0  # nothing to augment: plain cached features
    for name in ("full", "gradual", "lp-ft", "scratch"):  # the prefix changes, or there is none
        assert default_views(get_strategy(name), 10, "light") == 0, name
