"""The networks: torchvision backbones (and EfficientNet-Lite0, see efficientnet_lite.py) with a
new head, the hybrid model, pretrained weights.

Every model is split into the head (what a new dataset always has to learn) and block groups,
ordered from the input to the output, that the fine-tuning strategies freeze, unfreeze or give
their own learning rate (see strategies.py). A parameter belongs to the group whose module
prefix it starts with; `block_groups` covers every parameter outside the head exactly once. The
head is one module, named by `head_name`: a Linear, or with FinetuneConfig.dense_units or
dropout_rate set a ClassifierHead (hybrid: always a small MLP).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torchvision
from matrec.agent.training import efficientnet_lite
from matrec.agent.training.descriptors import descriptor_dim
from torch import nn

#: Per architecture family, how its top-level modules form block groups (input first).
_RESNET_GROUPS = [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]]
# ConvNeXt: the stem, then each stage with the downsampling layer in front of it; the final
# LayerNorm (classifier.0) goes with the last stage.
_CONVNEXT_GROUPS = [
    ["features.0"],
    ["features.1"],
    ["features.2", "features.3"],
    ["features.4", "features.5"],
    ["features.6", "features.7", "classifier.0"],
]
#: Width of the hybrid model's hidden layer, and its dropout, when the config leaves them at 0.
HYBRID_HIDDEN = 256
HYBRID_DROPOUT = 0.2


class ClassifierHead(nn.Sequential):
    """A cnn model's head when `dense_units` or `dropout_rate` is set; it takes the place of the
    single Linear (`fc` or `classifier.N`), so its parameters are named `fc.hidden.weight`,
    `fc.out.weight` and so on. Its children, in order, each only where it applies:

    * `hidden`: Linear(in_features, dense_units), and `act`: ReLU (dense_units > 0);
    * `dropout`: Dropout(dropout_rate) (dropout_rate > 0);
    * `out`: Linear(dense_units or in_features, classes).
    """

    def __init__(self, in_features: int, classes: int, dense_units: int, dropout_rate: float):
        layers: dict[str, nn.Module] = {}
        width = in_features
        if dense_units > 0:
            layers["hidden"] = nn.Linear(in_features, dense_units)
            layers["act"] = nn.ReLU(inplace=True)
            width = dense_units
        if dropout_rate > 0.0:
            layers["dropout"] = nn.Dropout(dropout_rate)
        layers["out"] = nn.Linear(width, classes)
        super().__init__(OrderedDict(layers))


def new_head(
    in_features: int, classes: int, *, dense_units: int = 0, dropout_rate: float = 0.0
) -> nn.Module:
    """A cnn model's head: a single Linear with the defaults (as before these settings
    existed, so older checkpoints still load), else a ClassifierHead."""
    if dense_units == 0 and dropout_rate == 0.0:
        return nn.Linear(in_features, classes)
    return ClassifierHead(in_features, classes, dense_units, dropout_rate)


class HybridModel(nn.Module):
    """A backbone's pooled embedding and standardised texture descriptors, concatenated and
    fed to a small MLP head. The descriptor mean and std are buffers, so they travel with the
    weights; they are computed on the training split before training starts."""

    desc_mean: torch.Tensor
    desc_std: torch.Tensor

    def __init__(
        self,
        backbone: nn.Module,
        embed_dim: int,
        descriptor_dim: int,
        classes: int,
        *,
        hidden: int = HYBRID_HIDDEN,
        dropout: float = HYBRID_DROPOUT,
    ):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("desc_mean", torch.zeros(descriptor_dim))
        self.register_buffer("desc_std", torch.ones(descriptor_dim))
        self.head = nn.Sequential(
            nn.Linear(embed_dim + descriptor_dim, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, classes),
        )

    def set_descriptor_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.desc_mean.copy_(mean)
        # A descriptor that is constant over the training set carries nothing; avoid 0/0.
        self.desc_std.copy_(std.clamp_min(1e-6))

    def forward(self, images: torch.Tensor, descriptors: torch.Tensor) -> torch.Tensor:
        embedding = self.backbone(images).flatten(1)
        standardised = (descriptors - self.desc_mean) / self.desc_std
        return self.head(torch.cat([embedding, standardised.to(embedding.dtype)], dim=1))


def build_model(
    name: str, num_classes: int, *, dense_units: int = 0, dropout_rate: float = 0.0
) -> nn.Module:
    """A classifier with random weights and a new `num_classes`-way head in place of its
    classification layer (see new_head)."""
    model = _backbone_model(name)
    head = head_name(model)
    old = model.get_submodule(head)
    assert isinstance(old, nn.Linear)
    _replace(
        model,
        head,
        new_head(old.in_features, num_classes, dense_units=dense_units, dropout_rate=dropout_rate),
    )
    return model


def build_hybrid(
    name: str,
    num_classes: int,
    descriptor_dim: int,
    *,
    dense_units: int = 0,
    dropout_rate: float = 0.0,
) -> HybridModel:
    """A HybridModel on a backbone whose classification layer is removed. Its head's hidden
    width is `dense_units` and its dropout `dropout_rate`; 0 keeps the defaults, HYBRID_HIDDEN
    and HYBRID_DROPOUT."""
    backbone = _backbone_model(name)
    head = head_name(backbone)
    old = backbone.get_submodule(head)
    assert isinstance(old, nn.Linear)
    _replace(backbone, head, nn.Identity())
    return HybridModel(
        backbone,
        old.in_features,
        descriptor_dim,
        num_classes,
        hidden=dense_units or HYBRID_HIDDEN,
        dropout=dropout_rate or HYBRID_DROPOUT,
    )


def model_from_file(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained model from a matrec model.pt or checkpoint; also return the file's
    description (classes, image_size, model_type, descriptors, config). The head's shape comes
    from the config's dense_units and dropout_rate (absent from older files: the defaults)."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or "model_state" not in saved:
        raise ValueError(f"{path} is not a matrec model or checkpoint")
    classes = len(saved["classes"])
    config = saved.get("config") or {}
    dense = int(config.get("dense_units", 0))
    dropout = float(config.get("dropout_rate", 0.0))
    if saved.get("model_type", "cnn") == "hybrid":
        model: nn.Module = build_hybrid(
            saved["model"],
            classes,
            descriptor_dim(saved["descriptors"]),
            dense_units=dense,
            dropout_rate=dropout,
        )
    else:
        model = build_model(saved["model"], classes, dense_units=dense, dropout_rate=dropout)
    model.load_state_dict(saved["model_state"])
    model.eval()
    return model, {k: v for k, v in saved.items() if not k.endswith("_state")}


def head_name(model: nn.Module) -> str:
    """The dotted name of the head: `head` (hybrid), `fc` (ResNets), `_fc` (EfficientNet-Lite)
    or `classifier.N`; a ClassifierHead there is the head as a whole."""
    if isinstance(model, HybridModel):
        return "head"
    for name in ("fc", "_fc"):
        if isinstance(getattr(model, name, None), (nn.Linear, ClassifierHead)):
            return name
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, nn.Sequential) and isinstance(
        classifier[-1], (nn.Linear, ClassifierHead)
    ):
        return f"classifier.{len(classifier) - 1}"
    raise ValueError(f"cannot find the classification head of {type(model).__name__}")


def block_groups(model: nn.Module) -> list[list[str]]:
    """The model's block groups, input first, as lists of module prefixes (see the module doc)."""
    if isinstance(model, HybridModel):
        return [[f"backbone.{p}" for p in group] for group in _backbone_groups(model.backbone)]
    return _backbone_groups(model)


def _backbone_groups(model: nn.Module) -> list[list[str]]:
    if isinstance(model, torchvision.models.ResNet):
        return [list(group) for group in _RESNET_GROUPS]
    if isinstance(model, torchvision.models.ConvNeXt):
        return [list(group) for group in _CONVNEXT_GROUPS]
    if efficientnet_lite.is_lite(model):
        return efficientnet_lite.block_groups(model)
    features = getattr(model, "features", None)
    classifier = getattr(model, "classifier", None)
    if isinstance(features, nn.Sequential) and isinstance(classifier, nn.Sequential):
        # MobileNetV3 and EfficientNet: each child of `features` is a group; the pretrained
        # part of the classifier (MobileNetV3's hidden Linear) goes with the last one.
        groups = [[f"features.{i}"] for i in range(len(features))]
        groups[-1] += [
            f"classifier.{i}"
            for i, layer in enumerate(classifier)
            if any(True for _ in layer.parameters()) and f"classifier.{i}" != _own_head(model)
        ]
        return groups
    raise ValueError(f"no block groups defined for {type(model).__name__}")


def _own_head(model: nn.Module) -> str:
    # A hybrid backbone has lost its head (now an Identity); its last classifier slot is it.
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, nn.Sequential) and isinstance(classifier[-1], nn.Identity):
        return f"classifier.{len(classifier) - 1}"
    return head_name(model)


def group_of(name: str, groups: list[list[str]]) -> int | None:
    """The index of the group that parameter or buffer `name` belongs to, None for the head."""
    for index, prefixes in enumerate(groups):
        if any(name.startswith(prefix + ".") for prefix in prefixes):
            return index
    return None


def load_pretrained(model: nn.Module, path: Path, classes: list[str] | None = None) -> str:
    """Load every tensor of `path` whose name and shape match `model`; return a summary line.

    `path` is a matrec checkpoint or model (a dict with "model_state"), or a plain state_dict
    (torchvision; timm ResNets use torchvision's names; other timm architectures name their
    layers differently and are refused as "nothing matches"). A matrec file trained on other
    `classes` contributes everything but its head. Tensors that do not fit, such as a
    1000-class ImageNet head, are skipped. Raises ValueError when nothing matches, which means
    the file is for another architecture.
    """
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read pretrained weights {path}: {exc}") from exc
    saved_classes: list[str] | None = None
    if isinstance(loaded, dict) and isinstance(loaded.get("model_state"), dict):
        saved_classes = loaded.get("classes")
        loaded = loaded["model_state"]
    elif isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} holds a {type(loaded).__name__}, not a state_dict")
    state = {
        _strip_prefixes(key): value
        for key, value in loaded.items()
        if isinstance(key, str) and isinstance(value, torch.Tensor)
    }
    drop_head = classes is not None and saved_classes is not None and saved_classes != classes
    return _load_matching(model, state, str(path), drop_head=drop_head)


def load_named_weights(model: nn.Module, name: str, weights: str) -> str:
    """Load the `pretrained_weights` named `weights` for architecture `name`: for
    efficientnet_lite0 the ImageNet weights matrec[imagenet] installs (offline), else
    torchvision's (see load_torchvision_weights)."""
    if name == efficientnet_lite.NAME:
        return load_pretrained(model, efficientnet_lite.imagenet_path(weights))
    return load_torchvision_weights(model, name, weights)


def load_torchvision_weights(model: nn.Module, name: str, weights: str) -> str:
    """Download (or take from torch's cache) torchvision's `weights` for architecture `name`
    and load them like a local state_dict. Needs internet access the first time."""
    enum = resolve_torchvision_weights(name, weights)
    state = enum.get_state_dict(progress=False)
    return _load_matching(model, dict(state), f"torchvision {enum}", drop_head=False)


def resolve_torchvision_weights(name: str, weights: str) -> Any:
    """torchvision's weights enum member for `weights` ('DEFAULT', 'IMAGENET1K_V1' or the
    full 'ResNet18_Weights.IMAGENET1K_V1') of architecture `name`. Downloads nothing."""
    enum_class = torchvision.models.get_model_weights(name)
    short = weights.split(".", 1)[1] if "." in weights else weights
    if "." in weights and weights.split(".", 1)[0] != enum_class.__name__:
        raise ValueError(f"pretrained_weights {weights!r} are not weights for {name}")
    try:
        return enum_class[short]
    except KeyError:
        known = ", ".join(["DEFAULT", *enum_class.__members__])
        raise ValueError(
            f"torchvision has no {short!r} weights for {name}; choose one of: {known}"
        ) from None


def _load_matching(
    model: nn.Module, state: dict[str, torch.Tensor], source: str, *, drop_head: bool
) -> str:
    target = model.backbone if isinstance(model, HybridModel) else model
    prefix = "backbone." if isinstance(model, HybridModel) else ""
    if isinstance(model, HybridModel) and any(key.startswith("backbone.") for key in state):
        # A hybrid checkpoint: its descriptor statistics belong to another training set.
        target, prefix = model, ""
        state = {k: v for k, v in state.items() if k not in ("desc_mean", "desc_std")}
    own = target.state_dict()
    head = head_name(model).removeprefix(prefix)
    if drop_head:
        state = {k: v for k, v in state.items() if not k.startswith(head + ".")}
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise ValueError(
            f"none of the {len(state)} tensors in {source} match {type(target).__name__} "
            f"(e.g. {next(iter(state), 'nothing')!r}); is it weights for another architecture?"
        )
    target.load_state_dict(matched, strict=False)
    skipped = sorted(k for k in state if k in own and k not in matched)
    missing = [k for k in own if k not in matched]
    summary = f"loaded {len(matched)}/{len(own)} tensors from {source}"
    if drop_head:
        summary += "; new head (the weights were trained on other classes)"
    if skipped:
        summary += f"; skipped for shape: {', '.join(skipped)}"
    if missing:
        summary += f"; {len(missing)} left as initialised"
    return summary


def _strip_prefixes(key: str) -> str:
    # DataParallel/DDP wrap names in "module."; some training frameworks in "model.".
    for prefix in ("module.", "model."):
        key = key.removeprefix(prefix)
    return key


def _backbone_model(name: str) -> nn.Module:
    if name == efficientnet_lite.NAME:
        return efficientnet_lite.build()
    constructor = getattr(torchvision.models, name, None)
    if constructor is None:
        raise ValueError(f"torchvision has no model named {name!r}")
    model: nn.Module = constructor(weights=None)
    return model


def _replace(model: nn.Module, dotted: str, module: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
