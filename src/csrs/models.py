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
- ``cifar-resnet20/56/110``: the CIFAR ResNets of He et al. (2016), Sec. 4.2, exactly as in
  Cohen et al.'s and MACER's code: 1x1 conv + BatchNorm projection shortcuts ("option B") where
  the shape changes (0.27M, 0.86M, 1.73M parameters), so their published weights load
  (:mod:`csrs.published`).
- ``resnet18`` / ``resnet50``: the ImageNet ResNets of He et al. (2016), Table 1, with
  projection shortcuts; ``resnet50`` is torchvision's (Cohen et al.'s ImageNet model).

The ResNets use torchvision's layer names (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer2.0.downsample.0``, ``fc``), written here without importing torchvision.

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

__all__ = ["ARCHITECTURES", "Normalize", "ResNet", "build_model", "count_parameters"]


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
# Residual networks (He et al., 2016), with torchvision's layer names


def _projection(in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
    """Returns the 1x1 conv + BatchNorm shortcut ("option B") where the shape changes, else None."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class _BasicBlock(nn.Module):
    """Returns ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` with two 3x3 convs."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _projection(in_channels, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class _Bottleneck(nn.Module):
    """Returns ``relu(bn3(conv3(...)) + shortcut(x))``: 1x1 down to ``planes``, 3x3, 1x1 up to
    ``4 * planes``; the stride sits on the 3x3 conv, as in torchvision ("ResNet v1.5")."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = _projection(in_channels, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class ResNet(nn.Module):
    """A stem, stages ``layer1..layerK`` of residual blocks, global average pooling and ``fc``.

    The names are torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer2.0.downsample.0``,
    ``fc``), which Cohen et al.'s CIFAR ResNet and MACER's ResNet-110 share, so their weights load
    as they are. ``imagenet_stem``: a 7x7 stride-2 conv and a 3x3 stride-2 max-pool; otherwise a
    3x3 conv (CIFAR). Stage k has ``depths[k]`` blocks of width ``widths[k]``; every stage but
    the first halves the resolution in its first block.
    """

    def __init__(self, block: type[_BasicBlock | _Bottleneck], widths: Sequence[int],
                 depths: Sequence[int], num_classes: int, in_channels: int, imagenet_stem: bool):
        super().__init__()
        kernel, stride = (7, 2) if imagenet_stem else (3, 1)
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel, stride, padding=kernel // 2,
                               bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if imagenet_stem else nn.Identity()
        channels = widths[0]
        for stage, (width, depth) in enumerate(zip(widths, depths, strict=True)):
            blocks = []
            for index in range(depth):
                blocks.append(block(channels, width, 2 if stage > 0 and index == 0 else 1))
                channels = width * block.expansion
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
        self.stages = len(widths)
        # Global pooling: Cohen's and MACER's AvgPool2d(8) on CIFAR's 8x8 maps, for any size.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        for stage in range(1, self.stages + 1):
            x = getattr(self, f"layer{stage}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def cifar_resnet(num_classes: int, input_shape: tuple[int, ...], depth: int) -> nn.Module:
    """Returns the CIFAR ResNet of depth ``6n + 2`` (He et al. 2016, Sec. 4.2) of Cohen et al.

    A 3x3 conv to 16 channels, then three stages of ``n`` basic blocks with 16, 32, 64 channels
    (stride 2 at the start of stages 2 and 3, 1x1 conv + BatchNorm projection shortcuts there),
    global average pooling and a linear layer: the network of Cohen et al.'s and MACER's code
    (from bearpaw/pytorch-classification), layer for layer. Global pooling lets it take any
    (C, H, W) with H, W >= 4.
    """
    if (depth - 2) % 6 != 0 or depth < 8:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1; got {depth}")
    blocks = (depth - 2) // 6
    channels, _, _ = _image_shape(input_shape, min_side=4)
    return _init_weights(ResNet(_BasicBlock, (16, 32, 64), (blocks,) * 3, num_classes, channels,
                                imagenet_stem=False))


def resnet18(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """Returns the ImageNet ResNet-18 (He et al. 2016, Table 1) for any (C, H, W), H, W >= 32.

    The ImageNet stem, four stages of two basic blocks with 64, 128, 256, 512 channels
    (projection shortcuts), adaptive average pooling and a linear layer; torchvision's names.
    """
    channels, _, _ = _image_shape(input_shape, min_side=32)
    return _init_weights(ResNet(_BasicBlock, (64, 128, 256, 512), (2, 2, 2, 2), num_classes,
                                channels, imagenet_stem=True))


def resnet50(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """Returns the ImageNet ResNet-50 (He et al. 2016, Table 1) for any (C, H, W), H, W >= 32.

    The ImageNet stem, four stages of 3, 4, 6, 3 bottleneck blocks of width 64, 128, 256, 512
    (outputs 4x wider), adaptive average pooling and a linear layer. Names, shapes and the stride
    on the 3x3 conv are torchvision's ``resnet50``, the model of Cohen et al.'s ImageNet
    checkpoints (whose state_dict holds 320 entries, 25.56M parameters at 1000 classes).
    """
    channels, _, _ = _image_shape(input_shape, min_side=32)
    return _init_weights(ResNet(_Bottleneck, (64, 128, 256, 512), (3, 4, 6, 3), num_classes,
                                channels, imagenet_stem=True))


def ham_resnet56(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """Returns the HAM10000 network of the paper's authors' code: the ImageNet stem (7x7 stride-2
    conv, 3x3 max-pool) in front of a ResNet-56's three stages of nine basic blocks, widened to
    64, 128, 256 channels, for their 299 px images; adaptive average pooling and a linear layer.
    """
    channels, _, _ = _image_shape(input_shape, min_side=32)
    return _init_weights(ResNet(_BasicBlock, (64, 128, 256), (9, 9, 9), num_classes, channels,
                                imagenet_stem=True))


# ---------------------------------------------------------------------------------------------
# Registry and the public constructor

def convex_cnn(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """Returns Wong & Kolter's "small" network: two 4x4 stride-2 convs (16 and 32 channels,
    padding 1), a 100-unit ReLU layer and a linear output layer. H and W must be multiples of 4.

    Linear/Conv2d/ReLU/Flatten only, so that the dual network of :mod:`csrs.convex` reads it.
    """
    if len(input_shape) != 3 or input_shape[1] % 4 or input_shape[2] % 4 or min(input_shape) < 1:
        raise ValueError(f"convex-cnn needs an image shape (C, H, W) with H and W multiples of 4; "
                         f"got {tuple(input_shape)}")
    channels, height, width = input_shape
    return nn.Sequential(
        nn.Conv2d(channels, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * (height // 4) * (width // 4), 100),
        nn.ReLU(),
        nn.Linear(100, num_classes),
    )


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "linear": linear,
    "mlp": mlp,
    "digits-cnn": small_cnn,
    "small-cnn": small_cnn,
    "cifar-resnet20": partial(cifar_resnet, depth=20),
    "cifar-resnet56": partial(cifar_resnet, depth=56),
    "cifar-resnet110": partial(cifar_resnet, depth=110),
    "resnet18": resnet18,
    "resnet50": resnet50,
    "ham-resnet56": ham_resnet56,
    # Linear/Conv/ReLU only, for Zhang & Evans's convex bounds (method zhang-evans).
    "convex-mlp": mlp,  # already Flatten/Linear/ReLU only
    "convex-cnn": convex_cnn,
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
