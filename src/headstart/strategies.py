"""Fine-tuning strategies as data.

A strategy says, and only says: whether to start from pretrained weights; which stage groups train in
which epochs (its phases); the learning rates (head, top backbone group, and the decay toward the stem);
what happens to BatchNorm in frozen groups; its default augmentation and epochs. The training loop in
`train.py` reads it; there is no strategy class hierarchy and no callback.

    scratch   random init, everything trains at one LR          (the control)
    linear    frozen pretrained backbone, new head              (feature extraction)
    partial   last k stage groups + head                        (default k = 2)
    full      every group, discriminative LRs                   (head >> top stage >> ... >> stem)
    gradual   head first, then one more stage group every `unfreeze_every` epochs (ULMFiT-style)
    lp-ft     linear probe first, then every group              (Kumar et al., 2022: protects features)

BatchNorm: every strategy that starts from pretrained weights keeps the pretrained running statistics in every
group, trained ones included (`train_bn_stats=False`; the affine weights still learn). Batch statistics of a
few hundred images are noisy and unlike ImageNet's, and switching a group to them costs more than fine-tuning
gains. `--train-bn` turns it back on (the measurements behind this default are in docs/analysis.md).
LayerNorm (ViTs, Swin, ConvNeXt) has no running statistics: it normalises every token or position by its own
statistics in training and evaluation alike, so there is no policy to apply and the plan says so.

Discriminative learning rates: `lr` for the top stage group and `lr_decay` times less for each group toward the
stem. A transformer's groups hold several blocks, and the LR also decays block by block inside a group (layer-wise
LR decay, the standard recipe for ViTs: BEiT, MAE): with k blocks in a group, each block gets lr_decay^(1/k) times
the LR of the block above it, so the top block of every group keeps the group's LR and the decay per group is the
same as a CNN's (at the default 0.6 per group of three blocks: 0.84 per block).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from torch import nn

from headstart.backbones import HEAD, StagedModel, count_params
from headstart.errors import HeadstartError


@dataclass(frozen=True)
class Phase:
    """From `start_epoch` on, the last `train_last` backbone stage groups train (None: all), plus the head."""

    start_epoch: int
    train_last: int | None


@dataclass(frozen=True)
class Strategy:
    name: str
    description: str
    pretrained: bool = True
    phases: tuple[Phase, ...] = (Phase(0, 0),)
    unfreeze_every: int = 0  # > 0: phases are generated, one more stage group every this many epochs
    head_lr: float = 1e-3
    lr: float = 1e-4  # the top backbone stage group; each group nearer the stem gets `lr_decay` times less
    lr_decay: float = 0.5
    frozen_bn_eval: bool = True  # frozen groups keep BatchNorm in eval mode: running stats stay pretrained
    train_bn_stats: bool = True  # False: trained groups too keep pretrained BN statistics (affine params still learn)
    augment: str = "light"
    epochs: int = 10

    def phases_for(self, num_stages: int) -> tuple[Phase, ...]:
        if self.unfreeze_every <= 0:
            return self.phases
        return tuple(Phase(i * self.unfreeze_every, i) for i in range(num_stages + 1))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Strategy:
        return cls(**{**d, "phases": tuple(Phase(**p) for p in d["phases"])})


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("scratch", "random init, all layers train (the control)", pretrained=False,
                 phases=(Phase(0, None),), head_lr=2e-3, lr=2e-3, lr_decay=1.0, augment="light", epochs=10),
        Strategy("linear", "frozen pretrained backbone, new head (feature extraction)",
                 phases=(Phase(0, 0),), head_lr=3e-3, augment="none", epochs=10),
        Strategy("partial", "last stage group(s) + head fine-tuned, the rest frozen",
                 phases=(Phase(0, 2),), head_lr=2e-3, lr=5e-4, lr_decay=0.5, train_bn_stats=False, augment="light",
                 epochs=10),
        Strategy("full", "all layers fine-tuned, discriminative learning rates",
                 phases=(Phase(0, None),), head_lr=1e-3, lr=2e-4, lr_decay=0.6, train_bn_stats=False, augment="light",
                 epochs=10),
        Strategy("gradual", "head first, then unfreeze one stage group per phase",
                 unfreeze_every=1, head_lr=2e-3, lr=5e-4, lr_decay=0.6, train_bn_stats=False, augment="light",
                 epochs=10),
        Strategy("lp-ft", "linear probe, then fine-tune all layers from that head",
                 phases=(Phase(0, 0), Phase(3, None)), head_lr=2e-3, lr=2e-4, lr_decay=0.6, train_bn_stats=False,
                 augment="light", epochs=10),
    )
}


def get_strategy(name: str, *, train_last: int | None = None, **overrides) -> Strategy:
    """The named strategy, with any field overridden (`train_last` sets k for `partial`)."""
    if name not in STRATEGIES:
        raise HeadstartError(f"unknown strategy '{name}': choose from {', '.join(STRATEGIES)}")
    strategy = STRATEGIES[name]
    if train_last is not None:
        if name != "partial":
            raise HeadstartError("--train-last applies to the partial strategy only")
        strategy = replace(strategy, phases=(Phase(0, train_last),))
    if not strategy.pretrained and overrides.get("train_bn_stats") is False:
        raise HeadstartError(f"{name} starts from random weights: its BatchNorm statistics must be learned, so "
                             "--freeze-bn does not apply (drop it)")
    return replace(strategy, **{k: v for k, v in overrides.items() if v is not None})


def parse_label(label: str) -> tuple[str, int | None]:
    """A strategy as `compare` names it: 'partial' or 'partial:K' (the last K stage groups) -> (name, K or None).
    The K form lets one comparison hold several depths of partial fine-tuning side by side."""
    name, sep, k = label.partition(":")
    if not sep:
        return name, None
    if not k.isdigit() or int(k) < 1:
        raise HeadstartError(f"'{label}': write partial:K with K ≥ 1, the number of last stage groups that train")
    return name, int(k)


def strategy_for_label(label: str) -> Strategy:
    """The strategy a `compare` label stands for ('partial:3' is partial with its last 3 stage groups)."""
    name, k = parse_label(label)
    return get_strategy(name, train_last=k)


def what_trains(strategy: Strategy) -> str:
    """What trains, in words (the results table of the reports)."""
    phases = [p.train_last for p in strategy.phases]
    if not strategy.pretrained:
        return "every layer from random weights"
    if strategy.unfreeze_every:
        return "the head first, then one more stage group at a time"
    if phases == [0]:
        return "only a new head on frozen ImageNet features"
    if phases == [None]:
        return "every layer, with smaller learning rates near the stem"
    if len(phases) == 1:
        return f"the last {phases[0]} stage group{'s' if phases[0] > 1 else ''} and the head"
    if phases == [0, None]:
        return "the head first (a linear probe), then every layer"
    return strategy.description


def phase_at(strategy: Strategy, num_stages: int, epoch: int) -> Phase:
    return [p for p in strategy.phases_for(num_stages) if p.start_epoch <= epoch][-1]


def trainable_groups(strategy: Strategy, stage_names: list[str], epoch: int) -> list[str]:
    """Names of the groups that train in `epoch` (0-based): the head, and the last k stage groups."""
    k = phase_at(strategy, len(stage_names), epoch).train_last
    k = len(stage_names) if k is None else min(k, len(stage_names))
    return [*stage_names[len(stage_names) - k :], HEAD]


def group_learning_rates(strategy: Strategy, stage_names: list[str]) -> dict[str, float]:
    """The LR of every group: `head_lr` for the head, `lr` for the top stage group, and `lr_decay` times less
    for each group below it (discriminative fine-tuning: early, generic features move least)."""
    n = len(stage_names)
    rates = {name: strategy.lr * strategy.lr_decay ** (n - 1 - i) for i, name in enumerate(stage_names)}
    rates[HEAD] = strategy.head_lr
    return rates


def layer_learning_rates(strategy: Strategy, model: StagedModel) -> list[tuple[str, list[nn.Module], float]]:
    """(group, modules, LR) for every layer, stem first: a CNN's stage group is one layer at its group's LR; a
    transformer group's blocks decay geometrically toward its group's LR below (see the module docstring)."""
    rates = group_learning_rates(strategy, model.stage_names)
    out = []
    for name in model.group_names:
        layers = model.layers(name) if name != HEAD else [[model.head]]
        k = len(layers)
        for j, modules in enumerate(layers):
            out.append((name, modules, rates[name] * strategy.lr_decay ** ((k - 1 - j) / k) if name != HEAD else rates[name]))
    return out


def apply_trainable(model: StagedModel, trainable: list[str]) -> None:
    """Freezing is one visible line per group: requires_grad follows the strategy."""
    for name in model.group_names:
        model.group(name).requires_grad_(name in trainable)


def trains_batchnorm(strategy: Strategy) -> bool:
    """Whether `set_train_mode` leaves some BatchNorm normalising with batch statistics at some point of the run:
    where BatchNorm re-estimates them (scratch, --train-bn) in a backbone group that trains, or in frozen groups
    too when they are not held in eval mode."""
    trains_backbone = any(p.train_last != 0 for p in strategy.phases) or strategy.unfreeze_every > 0
    return strategy.train_bn_stats and (trains_backbone or not strategy.frozen_bn_eval)


def set_train_mode(model: StagedModel, trainable: list[str], strategy: Strategy) -> None:
    """model.train(), except frozen groups, whose BatchNorm (and dropout) stay in eval mode so their
    running statistics keep describing the pretraining data instead of drifting with a few small batches."""
    model.train()
    if strategy.frozen_bn_eval:
        for name in model.group_names:
            if name not in trainable:
                model.group(name).eval()
    if not strategy.train_bn_stats:
        # With a few hundred images, batch statistics are noisy and unlike ImageNet's; switching a pretrained
        # group's BN to them when it unfreezes can cost more than the fine-tuning gains (seen with LP-FT).
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def parameter_groups(model: StagedModel, strategy: Strategy, weight_decay: float) -> list[dict]:
    """One optimizer group per layer (a CNN's stage group, a transformer block; see `layer_learning_rates`), and
    one without weight decay for its biases, norm weights, class token and position embeddings, each at its own
    LR; the top layer of a stage group comes last, so `{g["group"]: g["lr"]}` gives the group's LR. Frozen groups
    are included: they get gradients only once a phase unfreezes them."""
    groups = []
    for name, modules, lr in layer_learning_rates(strategy, model):
        decay, no_decay = [], []
        for p in (p for m in modules for p in m.parameters()):
            (no_decay if p.ndim <= 1 or _is_embedding(p, model) else decay).append(p)
        for params, wd in ((decay, weight_decay), (no_decay, 0.0)):
            if params:
                groups.append({"params": params, "lr": lr, "weight_decay": wd, "group": name})
    return groups


def _is_embedding(p: nn.Parameter, model: StagedModel) -> bool:
    """A ViT's class/register tokens and position embeddings: 3-D, but no more a weight to shrink than a bias."""
    stem = model.stages[model.stage_names[0]]
    return any(p is getattr(stem, n, None) for n in ("cls_token", "reg_token", "pos_embed"))


def describe_strategy(strategy: Strategy, model: StagedModel, epoch: int = 0) -> list[dict]:
    """Per group: parameters, trainable now or not, LR, BN mode — what `inspect` and every run print."""
    trainable = trainable_groups(strategy, model.stage_names, epoch)
    rates = group_learning_rates(strategy, model.stage_names)
    rows = []
    for name in model.group_names:
        module = model.group(name)
        rows.append({
            "group": name,
            "params": count_params(module),
            "trainable": name in trainable,
            "lr": rates[name] if name in trainable else 0.0,
            "layers": len(model.layers(name)) if name != HEAD else 1,
            "batchnorm": normalisation_policy(module, name in trainable, strategy),
            "unfreezes_at_epoch": unfreeze_epoch(strategy, model.stage_names, name),
        })
    return rows


def normalisation_policy(module: nn.Module, trainable: bool, strategy: Strategy) -> str:
    """What happens to the group's normalisation statistics: BatchNorm's running statistics are re-estimated or
    kept; LayerNorm has none to keep (it normalises each sample by its own statistics), and the plan says so."""
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules()):
        return "train" if trainable and strategy.train_bn_stats else "eval (frozen stats)"
    if any(isinstance(m, (nn.LayerNorm, nn.GroupNorm)) for m in module.modules()):
        return "LayerNorm: no running stats"
    return "-"


def unfreeze_epoch(strategy: Strategy, stage_names: list[str], name: str) -> int | None:
    """The epoch from which group `name` trains under `strategy` (None: never)."""
    for phase in strategy.phases_for(len(stage_names)):
        if name in trainable_groups(strategy, stage_names, phase.start_epoch):
            return phase.start_epoch
    return None
