"""Base classifiers f: [0, 1]-valued inputs -> logits, registered by name.

Randomized smoothing adds Gaussian noise in [0, 1] input space, *before* normalisation, so
every model built here is ``nn.Sequential(Normalize(mean, std), net)``: the per-channel
normalisation is the first layer of the base classifier, never part of the data transform,
and its mean/std travel with the checkpoint as buffers.

Architectures (``ARCHITECTURES``; one builder and one registry line each):

- ``linear``: flatten + one linear layer (its smoothed classifier is known in closed form).
- ``mlp``: flatten + two hidden layers of 256 units with ReLU (tabular data, digits).
- ``digits-cnn`` / ``small-cnn``: two 3x3 convs, a 2x2 max-pool and two linear layers, for
  small images such as the (1, 8, 8) scikit-learn digits.
- ``cifar-resnet20/56/110``: the CIFAR ResNets of He et al. (2016), Sec. 4.2, with the
  parameter-free zero-padding shortcut ("option A") of the paper, which gives its parameter
  counts (0.27M, 0.85M, 1.7M).
- ``resnet18``: the ImageNet ResNet-18 of He et al. (2016), Table 1, with 1x1 conv + BatchNorm
  projection shortcuts ("option B"), as in common ImageNet implementations.

Convolutions use Kaiming-normal initialisation (fan-out, ReLU gain), BatchNorm starts at the
identity (weight 1, bias 0), linear layers keep PyTorch's default initialisation. Everything is
built from standard layers, so the models run under ``torch.channels_last`` and
``torch.autocast(dtype=torch.bfloat16)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ARCHITECTURES", "Normalize", "build_model", "count_parameters"]


class Normalize(nn.Module):
    """Returns ``(x - mean) / std`` per channel (dim 1), or per feature for ``(B, D)`` inputs.

    ``mean`` and ``std`` are stored as buffers so that a saved ``state_dict`` carries them.
    With ``mean=None`` (and ``std=None``) the layer is the identity and holds no buffers.
    """

    def __init__(self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        super().__init__()
        if (mean is None) != (std is None):
            raise ValueError("Normalize needs both mean and std, or neither (identity)")
        mean_t = std_t = None
        if mean is not None and std is not None:
            mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
            std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
            if mean_t.numel() == 0 or mean_t.shape != std_t.shape:
                raise ValueError(
                    f"mean and std must be non-empty and of equal length; got {len(mean_t)} "
                    f"and {len(std_t)} values"
                )
            if not bool((std_t > 0).all()):
                raise ValueError(f"std must be positive; got {std_t.tolist()}")
        # A None buffer is left out of state_dict, so the identity layer saves nothing.
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is None:
            return x
        # Broadcast along dim 1: (C,) -> (C, 1, ..., 1) for (B, C, *spatial) inputs.
        shape = (-1,) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(shape)) / self.std.view(shape)

    def extra_repr(self) -> str:
        if self.mean is None:
            return "identity"
        return f"mean={self.mean.tolist()}, std={self.std.tolist()}"


def count_parameters(model: nn.Module) -> int:
    """Returns the number of scalar parameters of ``model`` (buffers such as mean/std excluded)."""
    return sum(p.numel() for p in model.parameters())


def _image_shape(input_shape: tuple[int, ...], min_side: int) -> tuple[int, int, int]:
    """Returns ``input_shape`` as (C, H, W), or raises naming the shape that was expected."""
    if len(input_shape) != 3 or min(input_shape[1:]) < min_side:
        raise ValueError(
            f"expected an image shape (C, H, W) with H, W >= {min_side}; "
            f"got input shape {tuple(input_shape)}"
        )
    channels, height, width = input_shape
    return channels, height, width


def _init_weights(model: nn.Module) -> nn.Module:
    """Returns ``model`` after Kaiming-normal conv init and identity BatchNorm init."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return model


# ---------------------------------------------------------------------------------------------
# Fully connected and small convolutional networks


def linear(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """Returns flatten + one linear layer: logits ``W x + b``."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


def mlp(num_classes: int, input_shape: tuple[int, ...], hidden: int = 256) -> nn.Module:
    """Returns flatten + two hidden ReLU layers of width ``hidden`` + a linear output layer."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


def small_cnn(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """Returns a two-conv CNN (32 and 64 channels, 3x3, then 2x2 max-pool) + a 128-unit head."""
    channels, height, width = _image_shape(input_shape, min_side=4)
    model = nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * (height // 2) * (width // 2), 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )
    return _init_weights(model)


# ---------------------------------------------------------------------------------------------
# Residual networks (He et al., 2016)


class _ZeroPadShortcut(nn.Module):
    """Option A shortcut: subsample by ``stride`` and zero-pad the new channels (no parameters)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.extra = out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))


class _BasicBlock(nn.Module):
    """Returns ``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))`` with two 3x3 convs."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, projection: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            if projection:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                    nn.BatchNorm2d(out_channels),
                )
            else:
                self.shortcut = _ZeroPadShortcut(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def _stage(
    in_channels: int, out_channels: int, blocks: int, stride: int, projection: bool
) -> nn.Sequential:
    """Returns ``blocks`` basic blocks; only the first changes stride and width."""
    layers = [_BasicBlock(in_channels, out_channels, stride, projection)]
    layers += [_BasicBlock(out_channels, out_channels, 1, projection) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def cifar_resnet(num_classes: int, input_shape: tuple[int, ...], depth: int) -> nn.Module:
    """Returns the CIFAR ResNet of depth ``6n + 2`` (He et al. 2016, Sec. 4.2).

    A 3x3 conv to 16 channels, then three stages of ``n`` basic blocks with 16, 32, 64 channels
    (stride 2 at the start of stages 2 and 3, option A zero-padding shortcuts), global average
    pooling and a linear layer. Global pooling lets it take any (C, H, W) with H, W >= 4.
    """
    if (depth - 2) % 6 != 0 or depth < 8:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1; got {depth}")
    blocks = (depth - 2) // 6
    channels, _, _ = _image_shape(input_shape, min_side=4)
    model = nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        _stage(16, 16, blocks, stride=1, projection=False),
        _stage(16, 32, blocks, stride=2, projection=False),
        _stage(32, 64, blocks, stride=2, projection=False),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, num_classes),
    )
    return _init_weights(model)


def resnet18(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """Returns the ImageNet ResNet-18 (He et al. 2016, Table 1) for any (C, H, W), H, W >= 32.

    A 7x7 stride-2 conv and 3x3 stride-2 max-pool stem, four stages of two basic blocks with
    64, 128, 256, 512 channels (option B projection shortcuts), adaptive average pooling and a
    linear layer.
    """
    channels, _, _ = _image_shape(input_shape, min_side=32)
    model = nn.Sequential(
        nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),
        _stage(64, 64, 2, stride=1, projection=True),
        _stage(64, 128, 2, stride=2, projection=True),
        _stage(128, 256, 2, stride=2, projection=True),
        _stage(256, 512, 2, stride=2, projection=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(512, num_classes),
    )
    return _init_weights(model)


# ---------------------------------------------------------------------------------------------
# Registry and the public constructor

def _convex(name: str) -> Callable[..., nn.Module]:
    """A builder from :data:`csrs.convex.CONVEX_ARCHITECTURES`, imported on first use."""

    def build(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
        from csrs.convex import CONVEX_ARCHITECTURES

        return CONVEX_ARCHITECTURES[name](num_classes, input_shape)

    return build


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "linear": linear,
    "mlp": mlp,
    "digits-cnn": small_cnn,
    "small-cnn": small_cnn,
    "cifar-resnet20": partial(cifar_resnet, depth=20),
    "cifar-resnet56": partial(cifar_resnet, depth=56),
    "cifar-resnet110": partial(cifar_resnet, depth=110),
    "resnet18": resnet18,
    # Linear/Conv/ReLU only, for Zhang & Evans's convex bounds (method zhang-evans).
    "convex-mlp": _convex("convex-mlp"),
    "convex-cnn": _convex("convex-cnn"),
}


def build_model(
    arch: str,
    *,
    num_classes: int,
    input_shape: tuple[int, ...],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> nn.Module:
    """Returns ``nn.Sequential(Normalize(mean, std), net)`` mapping [0, 1] inputs to logits.

    ``input_shape`` excludes the batch dimension: ``(D,)`` for tabular data, ``(C, H, W)`` for
    images. ``mean`` and ``std`` hold one value per channel (or feature), or one value for all;
    ``None`` makes the normalisation layer the identity.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture '{arch}'; choose from: {', '.join(sorted(ARCHITECTURES))}"
        )
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1; got {num_classes}")
    input_shape = tuple(int(size) for size in input_shape)
    if not input_shape or min(input_shape) < 1:
        raise ValueError(f"input_shape must be non-empty with positive sizes; got {input_shape}")
    if mean is not None and len(mean) not in (1, input_shape[0]):
        raise ValueError(
            f"mean/std need 1 or {input_shape[0]} values (the channels or features of input "
            f"shape {input_shape}); got {len(mean)}"
        )
    try:
        net = ARCHITECTURES[arch](num_classes, input_shape)
    except ValueError as err:
        raise ValueError(f"architecture '{arch}' cannot be built: {err}") from None
    return nn.Sequential(Normalize(mean, std), net)
