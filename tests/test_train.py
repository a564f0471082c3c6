"""The training loop end to end: reproducible, interruptible, and it learns on real data."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from headstart.api import train
from headstart.runs import load_run
from headstart.strategies import get_strategy
from headstart.train import TrainConfig, fit, micro_batch_size

from conftest import needs_shared
from helpers import TINY, one_step_config, splits_for, tiny_model


def test_same_seed_gives_identical_history(image_folder, tmp_path):
    cfg = TrainConfig(model=TINY, strategy="partial", epochs=2, batch_size=4, augment="light", seed=7,
                      num_workers=0, use_cache=False)
    a = train(image_folder, cfg, tmp_path / "a")
    b = train(image_folder, cfg, tmp_path / "b")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    ha = list(csv.DictReader(open(tmp_path / "a" / "history.csv")))
    hb = list(csv.DictReader(open(tmp_path / "b" / "history.csv")))
    assert strip(ha) == strip(hb) and a["best_val_accuracy"] == b["best_val_accuracy"]


def test_run_directory_has_everything_downstream_needs(image_folder, tmp_path):
    run = train(image_folder, TrainConfig(model=TINY, strategy="linear", epochs=2, use_cache=False), tmp_path / "run")
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"model.safetensors", "config.json", "run.json", "history.csv", "curves.png", "confusion.png"} <= files
    saved = json.loads((tmp_path / "run" / "run.json").read_text())
    for key in ("best_val_accuracy", "final_train_accuracy", "strategy", "model", "classes", "epochs",
                "train_seconds", "trainable_params", "total_params"):
        assert key in saved, key
    assert saved == json.loads(json.dumps(run))
    assert saved["trainable_params"] < saved["total_params"]
    model, config = load_run(tmp_path / "run")
    assert config["classes"] == ["blue", "red"] and model.num_classes == 2


def test_reloaded_run_reproduces_the_reported_accuracy(image_folder, tmp_path):
    from headstart.api import evaluate

    run = train(image_folder, TrainConfig(model=TINY, strategy="full", epochs=2, use_cache=False, num_workers=0),
                tmp_path / "run")
    metrics = evaluate(tmp_path / "run", image_folder)
    assert metrics["accuracy"] == pytest.approx(run["val_metrics"]["accuracy"])


def test_interrupt_keeps_the_best_checkpoint(image_folder, tmp_path):
    """Ctrl-C (KeyboardInterrupt) in epoch 2: the loop stops cleanly and epoch 1's weights survive."""
    model = tiny_model()
    train_split, val_split = splits_for(image_folder, model)
    saved = {}

    def interrupt_after_first(history, resume_point):
        if len(history) == 1:
            raise KeyboardInterrupt

    result = fit(model, get_strategy("full"), train_split, val_split, one_step_config(epochs=5),
                 on_checkpoint=lambda state, epoch: saved.update(epoch=epoch), on_epoch=interrupt_after_first)
    assert result.interrupted and len(result.history) == 1 and saved["epoch"] == 1 and result.best_state


def test_early_stopping_waits_for_the_last_phase(image_folder):
    model = tiny_model()
    train_split, val_split = splits_for(image_folder, model)
    cfg = one_step_config(epochs=12, patience=1, head_lr=0.0, lr=0.0)  # nothing learns: val never improves
    result = fit(model, get_strategy("gradual", head_lr=0.0, lr=0.0), train_split, val_split, cfg)
    last_phase = len(model.stage_names)  # gradual: one group per epoch, all unfrozen at epoch index N
    assert result.stopped_early and len(result.history) == last_phase + 1


@pytest.mark.slow
def test_linear_on_real_photos_beats_chance_by_a_clear_margin(tmp_path):
    """Ants vs bees, 30 training images per class at 96px with real ImageNet weights."""
    data = needs_shared("hymenoptera")
    cfg = TrainConfig(strategy="linear", epochs=8, image_size=96, seed=0)
    run = train(data, cfg, tmp_path / "run", per_class=30)
    assert run["best_val_accuracy"] >= 0.75


def test_runs_with_other_seeds_see_the_same_split_and_subsample(tmp_path, monkeypatch):
    """The run seed varies the training; the images it trains and validates on stay fixed (data_seed)."""
    import headstart.pipeline as pipeline
    from conftest import make_folder

    make_folder(tmp_path / "data", n=10)  # no val/: split by fraction, then subsampled
    drawn = []
    real_load_data = pipeline.load_data  # (pipeline.train is api.train: the one place a run loads its data)
    monkeypatch.setattr(pipeline, "load_data", lambda *a, **kw: drawn.append(real_load_data(*a, **kw)) or drawn[-1])
    for seed in (0, 1):
        train(tmp_path / "data", one_step_config(seed=seed), tmp_path / f"run{seed}", per_class=4, val_fraction=0.3)
    assert drawn[0].train.refs == drawn[1].train.refs and drawn[0].val.refs == drawn[1].val.refs
    assert len(drawn[0].train.refs) == 8


def test_a_group_that_unfreezes_mid_run_warms_up_again(image_folder, tmp_path):
    # lp-ft unfreezes the backbone at epoch 4; the schedule's LR there is the same either way, the ramp starts it at 1%
    cfg = dict(model=TINY, strategy="lp-ft", epochs=5, batch_size=4, num_workers=0, use_cache=False, patience=None)
    train(image_folder, TrainConfig(**cfg), tmp_path / "plain")
    train(image_folder, TrainConfig(**cfg, unfreeze_warmup_epochs=1.0), tmp_path / "ramped")
    plain, ramped = (list(csv.DictReader(open(tmp_path / name / "history.csv"))) for name in ("plain", "ramped"))
    switch = 3  # the 4th epoch, the first with the backbone training
    assert float(ramped[switch]["lr_stage5"]) == pytest.approx(0.01 * float(plain[switch]["lr_stage5"]))
    assert ramped[switch]["lr_head"] == plain[switch]["lr_head"]  # the head trained all along: no second warm-up
    assert float(ramped[switch + 1]["lr_stage5"]) == pytest.approx(float(plain[switch + 1]["lr_stage5"]))


# ----------------------------------------------------------------------------------- imbalanced classes
def test_the_best_epoch_follows_the_selection_metric():
    """On imbalanced classes the best epoch is the one with the best val balanced accuracy, not accuracy."""
    import torch

    from headstart.train import LoopState

    model = tiny_model()
    rows = [{"epoch": 1, "val_accuracy": 0.90, "val_balanced_accuracy": 0.50},  # always the large class
            {"epoch": 2, "val_accuracy": 0.85, "val_balanced_accuracy": 0.80}]
    logits, labels = torch.zeros(2, 2), torch.zeros(2, dtype=torch.long)
    by_accuracy, by_balanced = LoopState(), LoopState(select_on="val_balanced_accuracy")
    for row in rows:
        by_accuracy.record(dict(row), model, logits, labels)
        by_balanced.record(dict(row), model, logits, labels)
    assert by_accuracy.best_epoch == 1 and by_balanced.best_epoch == 2
    assert by_balanced.stale == 0 and by_accuracy.stale == 1


def test_imbalance_is_countered_and_selected_on_balanced_accuracy(tmp_path, monkeypatch):
    """12 red vs 3 blue training images (4:1): selection and the headline use balanced accuracy, and `auto`
    trains with the measured counter-measure."""
    import headstart.train as train_mod
    from conftest import make_folder
    from headstart.train import BALANCE_AUTO

    data = tmp_path / "data"
    make_folder(data / "train", classes=("red",), n=12, seed=1)
    make_folder(data / "train", classes=("blue",), n=3, seed=2)
    make_folder(data / "val", n=3, seed=3)
    make_folder(data / "test", n=4, seed=4)
    seen_weights, samplers = [], []
    real, real_sampler = train_mod.train_one_epoch, train_mod.balanced_sampler
    monkeypatch.setattr(train_mod, "train_one_epoch", lambda *a, **k: seen_weights.append(k["class_weights"]) or real(*a, **k))
    monkeypatch.setattr(train_mod, "balanced_sampler", lambda *a: samplers.append(a[1]) or real_sampler(*a))
    run = train(data, one_step_config(epochs=3, strategy="full"), tmp_path / "run")
    assert run["selected_on"] == "val_balanced_accuracy" and run["test_metric"] == "balanced_accuracy"
    assert run["balance"] == BALANCE_AUTO and run["class_counts"] == {"blue": 3, "red": 12}
    history = [row for row in csv.DictReader(open(tmp_path / "run" / "history.csv"))]
    balanced = [float(r["val_balanced_accuracy"]) for r in history]
    assert run["best_epoch"] == balanced.index(max(balanced)) + 1
    assert "imbalanced" in (tmp_path / "run" / "report.html").read_text()
    if BALANCE_AUTO == "weighted":  # blue weighs 4x red in the loss: N / (K n_c) = 15/6 and 15/24
        assert [w.tolist() for w in seen_weights] == [[2.5, 0.625]] * 3 and samplers == []
    else:  # class-balanced batches drawn from the training counts, the loss unweighted
        assert samplers == [[3, 12]] and seen_weights == [None] * 3
    balanced_run = train(data, one_step_config(epochs=1, balance="none"), tmp_path / "none")
    assert balanced_run["balance"] == "none" and balanced_run["selected_on"] == "val_balanced_accuracy"


def test_balance_recipes():
    import torch

    from headstart.errors import HeadstartError
    from headstart.train import balanced_sampler, class_weights, resolve_balance

    weights = class_weights([80, 16, 0])
    assert weights.tolist() == pytest.approx([96 / 160, 96 / 32, 0.0])  # N / (K n_c), K = classes present
    assert (weights[:2] * torch.tensor([80, 16])).tolist() == pytest.approx([48, 48])  # each class weighs alike
    labels = torch.tensor([0] * 80 + [1] * 16)
    drawn = labels[list(balanced_sampler(labels, [80, 16], torch.Generator().manual_seed(0)))]
    assert len(drawn) == 96 and 0.35 < drawn.float().mean().item() < 0.65  # about half blue, not a sixth
    again = labels[list(balanced_sampler(labels, [80, 16], torch.Generator().manual_seed(0)))]
    assert torch.equal(drawn, again)  # the run's generator: a seed repeats the draws
    assert resolve_balance("auto", [10, 9]) == "none" and resolve_balance("auto", [10, 6]) != "none"
    assert resolve_balance("sampler", [10, 10]) == "sampler"
    assert resolve_balance("auto", [10, 2], world_size=2) == "weighted"  # several processes: the loss is weighed
    with pytest.raises(HeadstartError, match="with --devices N use --balance weighted"):
        resolve_balance("sampler", [10, 2], world_size=2)
    with pytest.raises(HeadstartError, match="--balance must be one of"):
        resolve_balance("oversample", [10, 2])


def test_a_runs_randomness_follows_its_own_seed_not_the_global_state(image_folder, tmp_path):
    import torch

    cfg = TrainConfig(model=TINY, strategy="partial", epochs=2, batch_size=4, augment="light", views=0,
                      num_workers=0, use_cache=False)
    histories = []
    for global_seed in (123, 456):  # whatever the caller did to torch's global generator before
        torch.manual_seed(global_seed)
        train(image_folder, cfg, tmp_path / f"g{global_seed}")
        histories.append([{k: v for k, v in r.items() if k != "seconds"}
                          for r in csv.DictReader(open(tmp_path / f"g{global_seed}" / "history.csv"))])
    assert histories[0] == histories[1]


def test_the_forgetting_monitor_is_timed_apart_from_training(image_folder, tmp_path, monkeypatch):
    import headstart.train as train_mod

    clock = [0.0]

    def tick() -> float:  # a fake clock: each reading advances it a millisecond; the monitor "takes" 100 s
        clock[0] += 0.001
        return clock[0]

    def monitor(model, epoch) -> dict:
        clock[0] += 100.0
        return {"drift_head": 0.0}

    monkeypatch.setattr(train_mod.time, "perf_counter", tick)
    model = tiny_model()
    train_split, val_split = splits_for(image_folder, model)
    result = fit(model, get_strategy("partial"), train_split, val_split, one_step_config(epochs=2), monitor=monitor)
    assert result.monitor_seconds == pytest.approx(200.0, abs=0.1)
    assert result.train_seconds < 1.0  # the monitor's 100 s per epoch are not training time
    assert all(r["monitor_seconds"] == pytest.approx(100.0, abs=0.01) and r["seconds"] < 1.0 for r in result.history)


def test_micro_batches_give_the_whole_batch_step(image_folder, tmp_path):
    """Splitting each batch into forward/backward passes of 2 images adds up to the same optimizer steps (BatchNorm
    kept pretrained): the trained weights and the losses agree with the whole-batch run up to float rounding."""
    from safetensors.torch import load_file

    runs = {}
    for micro in (0, 2):
        cfg = TrainConfig(model="test_efficientnet", strategy="full", epochs=2, batch_size=8, micro_batch=micro,
                          use_cache=False, num_workers=0, augment="none", patience=None, monitor_folder="none")
        runs[micro] = train(image_folder, cfg, tmp_path / f"micro{micro}")
    whole, split = (load_file(tmp_path / f"micro{m}" / "model.safetensors") for m in (0, 2))
    assert whole.keys() == split.keys()
    moved = [k for k in whole if "head" in k or "blocks" in k]
    assert moved and all(torch.allclose(whole[k], split[k], atol=1e-6, rtol=1e-5) for k in whole)
    assert runs[0]["final_train_accuracy"] == runs[2]["final_train_accuracy"]


def test_micro_batches_only_where_no_layer_normalises_with_batch_statistics():
    model = tiny_model()
    for module in model.modules():
        module.train(False)
    assert micro_batch_size(TrainConfig(batch_size=32), model, 224, world_size=1) == 8  # 8 images at 224 px
    assert micro_batch_size(TrainConfig(batch_size=32), model, 112, world_size=1) is None  # 32 fit: one pass
    assert micro_batch_size(TrainConfig(batch_size=32, micro_batch=4), model, 112, world_size=1) == 4
    assert micro_batch_size(TrainConfig(batch_size=32, micro_batch=0), model, 224, world_size=1) is None
    assert micro_batch_size(TrainConfig(batch_size=32), model, 224, world_size=2) is None  # DDP: its own split
    model.train()  # BatchNorm re-estimating statistics (scratch, --train-bn): parts are ghost batch norm's
    assert micro_batch_size(TrainConfig(batch_size=32, micro_batch=4), model, 112, world_size=1) is None  # not asked
    assert micro_batch_size(TrainConfig(batch_size=32, ghost_batch_norm=0), model, 224, world_size=1) is None  # off
    assert micro_batch_size(TrainConfig(batch_size=32, ghost_batch_norm=4), model, 112, world_size=1) == 4  # asked
    assert micro_batch_size(TrainConfig(batch_size=32, ghost_batch_norm=16), model, 224, world_size=2) is None


def test_automatic_ghost_batch_norm_splits_only_batches_over_the_micro_batch_budget():
    """By default a batch whose BatchNorm trains is split where a whole one would exceed MICRO_BATCH_PIXELS (8
    images at 224 px), into equal parts; at 112 px and below the batch of 32 stays whole (the lesson's and the
    recommend benchmark's runs compute what they did)."""
    from headstart.train import ghost_batch_norm_size

    assert ghost_batch_norm_size(None, 32, 224) == 8
    assert [ghost_batch_norm_size(None, 32, size) for size in (32, 64, 96, 112)] == [None] * 4
    assert ghost_batch_norm_size(None, 32, 160) == 11  # budget 15: three parts, 11 + 11 + 10
    assert ghost_batch_norm_size(None, 32, 128) == 16  # budget 24: two parts of 16, not 24 + 8
    assert ghost_batch_norm_size(None, 32, 1024) == 1
    assert ghost_batch_norm_size(None, 16, 224) == 8 and ghost_batch_norm_size(None, 8, 224) is None
    assert ghost_batch_norm_size(0, 32, 224) is None and ghost_batch_norm_size(4, 32, 64) == 4


def test_ghost_batch_norm_normalises_each_part_with_its_own_statistics(image_folder, tmp_path):
    """scratch with ghost BN of 2 in batches of 8: every part updates BatchNorm's running statistics (4 updates per
    step) and the step is not the whole batch's; parts as large as the batch are the whole batch, exactly."""
    from safetensors.torch import load_file

    def scratch(ghost, name):
        cfg = TrainConfig(model="test_efficientnet", strategy="scratch", epochs=1, batch_size=8, ghost_batch_norm=ghost,
                          use_cache=False, num_workers=0, augment="none", patience=None, monitor_folder="none")
        run = train(image_folder, cfg, tmp_path / name)
        return run, load_file(tmp_path / name / "model.safetensors")

    (whole_run, whole), (_, same), (ghost_run, ghost) = scratch(None, "whole"), scratch(8, "as-large"), scratch(2, "ghost")
    steps = -(-whole_run["n_train"] // 8)
    tracked = [k for k in whole if k.endswith("num_batches_tracked")]
    assert tracked and all(int(whole[k]) == steps for k in tracked)
    assert all(int(ghost[k]) == sum(-(-min(8, whole_run["n_train"] - 8 * i) // 2) for i in range(steps)) for k in tracked)
    assert all(torch.equal(whole[k], same[k]) for k in whole)  # a part as large as the batch: the whole batch
    assert any(not torch.allclose(whole[k], ghost[k]) for k in whole if k.endswith("running_mean"))
    assert json.loads((tmp_path / "ghost" / "config.json").read_text())["batchnorm_parts"] == 2


def test_ghost_batch_norm_is_refused_where_no_batchnorm_trains(image_folder, tmp_path):
    from headstart.errors import HeadstartError

    for strategy in ("linear", "partial", "full"):
        with pytest.raises(HeadstartError, match="--ghost-bn applies where BatchNorm trains"):
            train(image_folder, TrainConfig(model=TINY, strategy=strategy, ghost_batch_norm=8), tmp_path / strategy)
    with pytest.raises(HeadstartError, match="1 or more"):
        train(image_folder, TrainConfig(model=TINY, strategy="scratch", ghost_batch_norm=-1), tmp_path / "negative")
