"""Zhang & Evans (2019): cost-sensitive robustness from convex-relaxation (dual) bounds, in l2.

The paper's Table 4 compares CS-RS with Zhang & Evans's certified cost-sensitive training, moved
from l_inf to l2 with the dual network of Wong et al. (2018). This module is that baseline:

- :func:`margin_lower_bounds` gives, for every class k, a lower bound J_k(x) of
  ``min_{||x' - x||_2 <= eps} f_y(x') - f_k(x')``: the dual objective of Wong & Kolter's convex
  outer bound of the ReLU network, evaluated at ``c = e_y - e_k`` (``convex_adversarial``).
  J_k(x) > 0 proves that k never beats y in the ball, so k is never predicted there.
- :func:`certify_convex` / :func:`certify_dataset_convex`: a sensitive example is certified when
  J_k > 0 for every k in Omega_y (Zhang & Evans's cost-sensitive robustness: no x' in the ball is
  classified into Omega_y); a non-sensitive one when J_k > 0 for every k != y (standard
  certified robustness). The certificates are deterministic and cover the whole l2 ball, not its
  intersection with the [0, 1] box.
- :func:`cost_sensitive_robust_loss`: Zhang & Evans's robust loss on the costly pairs, which the
  objective ``zhang-evans`` of :mod:`csrs.objectives` adds to the clean cross-entropy.

``convex_adversarial`` reads ``nn.Sequential`` networks of ``nn.Linear``, ``nn.Conv2d``,
``nn.ReLU`` and ``nn.Flatten`` only (its BatchNorm support is broken in 0.4.4). The csrs model
``nn.Sequential(Normalize(mean, std), net)`` is accepted: nested Sequentials are flattened, an
identity ``Normalize`` (mean/std None) is dropped, and a real one is folded exactly into a
following linear layer. It cannot be folded into a zero-padded convolution (the padding would
have to be the mean), so convolutional models take their [0, 1] inputs unnormalised. The
architectures it reads are built by :mod:`csrs.models` (``convex-mlp``, ``convex-cnn``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from csrs.costs import CostMatrix
from csrs.models import ARCHITECTURES, Normalize
from csrs.results import CONVEX, CONVEX_COLUMNS, ResultsStream, format_float, prepare_results

__all__ = [
    "CONVEX_ARCHITECTURES",
    "CONVEX_COLUMNS",
    "ConvexCertificates",
    "certify_convex",
    "certify_dataset_convex",
    "check_convex_supported",
    "convex_sequential",
    "cost_sensitive_robust_loss",
    "margin_lower_bounds",
]

_SUPPORTED = "Linear, Conv2d, ReLU, Flatten (and csrs Normalize in front)"


# The architectures of csrs.models that the dual network reads (Linear/Conv2d/ReLU/Flatten only).
CONVEX_ARCHITECTURES: dict[str, Callable[[int, tuple[int, ...]], nn.Module]] = {
    name: ARCHITECTURES[name] for name in ("convex-mlp", "convex-cnn")
}


def _dual_network(net: nn.Module, x: Tensor, eps: float) -> Any:
    """Wong & Kolter's dual network of ``net`` around ``x`` in the l2 ball of radius ``eps``.

    ``convex-adversarial`` is an optional extra (its last release is from 2021): it is imported
    here, where it is used, so that the rest of csrs never needs it."""
    try:
        from convex_adversarial import DualNetwork
    except ImportError:
        raise ValueError("Zhang & Evans's convex bounds need the optional package "
                         "convex-adversarial: pip install 'csrs[convex]'") from None
    return DualNetwork(net, x, eps, norm_type="l2")


# ---------------------------------------------------------------------------------------------
# From a csrs model to the plain Sequential that convex_adversarial reads


class _NormalizedLinear(nn.Linear):
    """``linear((x - mean) / std)`` as one linear layer whose weight and bias are computed from
    the wrapped layer on every access, so that gradients reach the original parameters."""

    def __init__(self, linear: nn.Linear, scale: Tensor, shift: Tensor):
        nn.Module.__init__(self)  # no parameters of its own: weight and bias are properties
        self.linear = linear
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    @property
    def weight(self) -> Tensor:
        return self.linear.weight * self.scale

    @property
    def bias(self) -> Tensor:
        shifted = self.linear.weight @ self.shift
        return shifted if self.linear.bias is None else self.linear.bias + shifted

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


def _leaf_layers(model: nn.Module) -> Iterator[nn.Module]:
    if isinstance(model, nn.Sequential):
        for layer in model:
            yield from _leaf_layers(layer)
    else:
        yield model


def _unsupported(layer: nn.Module, why: str = "") -> ValueError:
    reason = f" ({why})" if why else ""
    return ValueError(f"convex bounds cannot handle layer {layer!r}{reason}; supported: "
                      f"{_SUPPORTED}, in one nn.Sequential ending in Linear")


def _check_conv(layer: nn.Conv2d) -> None:
    if (isinstance(layer.padding, str) or layer.groups != 1 or layer.dilation != (1, 1)
            or layer.padding_mode != "zeros"):
        raise _unsupported(layer, "only groups=1, dilation=1 and numeric zero padding")


def _conv_shape(layer: nn.Conv2d, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Returns the conv's output shape, or raises if its transpose does not restore ``shape``
    (convex_adversarial transposes without output_padding)."""
    sides = []
    for side, kernel, stride, padding in zip(shape[1:], layer.kernel_size, layer.stride,
                                             layer.padding, strict=True):
        if (side + 2 * padding - kernel) % stride:
            raise _unsupported(layer, f"input side {side} + 2*padding - kernel must be a "
                                      f"multiple of the stride, as for kernel 4, stride 2, "
                                      f"padding 1 on even sides")
        sides.append((side + 2 * padding - kernel) // stride + 1)
    return (layer.out_channels, *sides)


def _fold_normalize(norm: Normalize, following: list[nn.Module],
                    input_shape: tuple[int, ...] | None) -> list[nn.Module]:
    """Returns ``following`` with ``norm`` folded into its first linear layer (exact)."""
    flatten = following[:1] if following and isinstance(following[0], nn.Flatten) else []
    linear = following[len(flatten)] if len(following) > len(flatten) else None
    if not isinstance(linear, nn.Linear):
        raise ValueError("input normalisation can be folded only into a following Linear layer; "
                         "build convolutional convex models with mean=None, std=None (inputs "
                         "in [0, 1])")
    if input_shape is None:
        raise ValueError("folding the input normalisation needs the input shape")
    shape = (-1,) + (1,) * (len(input_shape) - 1)
    std = norm.std.view(shape).expand(input_shape)
    mean = norm.mean.view(shape).expand(input_shape)
    folded = _NormalizedLinear(linear, (1 / std).reshape(-1), (-mean / std).reshape(-1))
    return [*flatten, folded, *following[len(flatten) + 1:]]


def convex_sequential(model: nn.Module, input_shape: tuple[int, ...] | None = None
                      ) -> nn.Sequential:
    """Returns ``model`` as one flat ``nn.Sequential`` of layers convex_adversarial reads.

    The layers are shared with ``model`` (gradients flow to its parameters). Raises ValueError
    naming the first unsupported layer. With ``input_shape`` (C, H, W) or (D,), convolution
    shapes are checked too, and a non-identity ``Normalize`` can be folded into the next Linear.
    """
    layers = list(_leaf_layers(model))
    if not layers:
        raise ValueError("convex bounds need a non-empty nn.Sequential")
    if isinstance(layers[0], Normalize):
        norm, layers = layers[0], layers[1:]
        if norm.mean is not None:
            layers = _fold_normalize(norm, layers, input_shape)
    shape = input_shape
    for layer in layers:
        if isinstance(layer, nn.Conv2d):
            _check_conv(layer)
            if shape is not None:
                if len(shape) != 3:
                    raise _unsupported(layer, f"needs (C, H, W) inputs, got shape {shape}")
                shape = _conv_shape(layer, shape)
        elif isinstance(layer, nn.Flatten):
            if (layer.start_dim, layer.end_dim) != (1, -1):
                raise _unsupported(layer, "only Flatten(start_dim=1, end_dim=-1)")
            shape = None if shape is None else (math.prod(shape),)
        elif isinstance(layer, nn.Linear):
            shape = None if shape is None else (layer.out_features,)
        elif not isinstance(layer, nn.ReLU):
            raise _unsupported(layer)
    if not isinstance(layers[-1], nn.Linear):
        raise _unsupported(layers[-1], "the last layer must be Linear")
    return nn.Sequential(*layers)


def check_convex_supported(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> None:
    """Returns None if convex_adversarial can bound ``model``; else raises a one-line ValueError
    naming the first unsupported layer and what is supported."""
    convex_sequential(model, input_shape)


# ---------------------------------------------------------------------------------------------
# Bounds, the robust loss and the training objective


def _check_eps(eps: float) -> float:
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0; got {eps!r}")
    return float(eps)


def margin_lower_bounds(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """Returns J (B, m): J[i, k] <= min over ||x' - x_i||_2 <= eps of f_y(x') - f_k(x'), and
    J[i, y_i] = 0.

    The dual objective of Wong & Kolter's convex outer bound at c = e_y - e_k (Wong et al. 2018,
    l2 ball); exact for a linear model (margin - eps * ||w_y - w_k||_2) and at eps = 0.
    Differentiable in the model's parameters.
    """
    eps = _check_eps(eps)
    net = convex_sequential(model, tuple(x.shape[1:]))
    num_classes = net[-1].out_features
    eye = torch.eye(num_classes, device=x.device, dtype=x.dtype)
    directions = eye[y].unsqueeze(1) - eye.unsqueeze(0)  # row k: e_y - e_k
    bounds = _dual_network(net, x, eps)(directions)
    return bounds.masked_fill(eye[y].bool(), 0.0)


def cost_sensitive_robust_loss(model: nn.Module, x: Tensor, y: Tensor, cost_rows: Tensor,
                               eps: float) -> Tensor:
    """Returns Zhang & Evans's cost-sensitive robust loss of the batch (0-dim):
    (1/B) sum_i sum_{k in Omega_{y_i}} C[y_i][k] * log(1 + exp(-J_k(x_i))).

    ``cost_rows`` (B, m) holds each example's cost row C[y] (a bool Omega_y table means unit
    costs). Each costly pair (y -> k) is a logistic loss on its certified margin J_k, weighted by
    its cost (Zhang & Evans 2019, Sec. 3; Wong & Kolter's robust cross-entropy restricted to
    costly targets). Their code puts the costs inside one log, log(1 + sum_k C_k exp(-J_k)); the
    two agree for a single costly class of cost 1 and both vanish as every J_k grows. Examples
    with empty Omega_y contribute 0, and their bounds are not computed.
    """
    costs = cost_rows.to(x.dtype)
    sensitive = (costs > 0).any(1)
    if not bool(sensitive.any()):
        return x.new_zeros(())
    bounds = margin_lower_bounds(model, x[sensitive], y[sensitive], eps)
    return (costs[sensitive] * F.softplus(-bounds)).sum() / len(y)


# ---------------------------------------------------------------------------------------------
# Certification


@dataclass
class ConvexCertificates:
    """Per-example deterministic certificates of a batch, as (B,) tensors.

    ``certified``: for sensitive examples, no x' in the l2 ball is classified into Omega_y; for
    the others, every x' in the ball is classified y. ``margin`` is the smallest certified margin
    J_k over the classes that matter (Omega_y, or all k != y): certified iff margin > 0.
    """

    predict: Tensor
    correct: Tensor
    sensitive: Tensor
    certified: Tensor
    margin: Tensor


@torch.no_grad()
def certify_convex(model: nn.Module, x: Tensor, y: Tensor, costly: Tensor,
                   eps: float) -> ConvexCertificates:
    """Returns the convex-relaxation certificates of a batch; ``costly`` (B, m) bool is Omega_y.

    Sound: a certified sensitive example has no adversarial example into Omega_y within l2
    distance eps (Zhang & Evans's cost-sensitive robustness), a certified non-sensitive example
    none at all (Wong et al. 2018), because J_k is a lower bound of the margin f_y - f_k.
    """
    predict = model(x).argmax(1)
    bounds = margin_lower_bounds(model, x, y, eps)
    sensitive = costly.any(1)
    others = ~F.one_hot(y, bounds.shape[1]).bool()
    relevant = torch.where(sensitive[:, None], costly, others)
    margin = bounds.masked_fill(~relevant, math.inf).min(1).values
    return ConvexCertificates(predict, predict == y, sensitive, margin > 0, margin)


def certify_dataset_convex(model: nn.Module, dataset: Dataset, cost_matrix: CostMatrix, *,
                           eps: float, batch_size: int = 256, indices: Iterable[int] | None = None,
                           out: str | Path | None = None,
                           progress: bool = True) -> list[dict[str, Any]]:
    """Certify ``dataset[i]`` for each index and return one row (a dict) per example.

    Columns :data:`CONVEX_COLUMNS`: ``predict`` is the clean argmax, ``certified`` the certificate
    of :func:`certify_convex`, ``margin`` its smallest certified margin, ``time`` seconds per
    example. With ``out``, rows are appended to a TSV batch by batch and an existing file is
    resumed: finished examples are skipped and a torn last line is dropped; a file made with
    another eps is an error.
    """
    eps = _check_eps(eps)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    device = next(model.parameters()).device
    costly_table = torch.tensor(cost_matrix.mask, device=device)
    indices = list(range(len(dataset)) if indices is None else indices)
    settings = {"eps": eps, "cost": cost_matrix.spec(), "cost_description": str(cost_matrix),
                "cost_matrix": cost_matrix.to_list(), "class_names": cost_matrix.class_names}
    rows = (prepare_results(out, CONVEX_COLUMNS, settings, CONVEX) if out is not None else [])
    with ResultsStream(out, CONVEX_COLUMNS, rows, indices, desc="certify-convex",
                       progress=progress) as stream:
        for start in range(0, len(stream.todo), batch_size):
            chunk = stream.todo[start:start + batch_size]
            items = [dataset[index] for index in chunk]
            x = torch.stack([torch.as_tensor(item[0]) for item in items]).to(device)
            y = torch.as_tensor([int(item[1]) for item in items], device=device)
            began = time.perf_counter()
            cert = certify_convex(model, x, y, costly_table[y], eps)
            seconds = (time.perf_counter() - began) / len(chunk)
            stream.add([
                {"idx": index, "label": int(label), "predict": int(predict),
                 "correct": int(correct), "sensitive": int(sensitive),
                 "certified": int(certified), "margin": format_float(margin),
                 "eps": format_float(eps),
                 "time": f"{seconds:.4f}"}
                for index, label, predict, correct, sensitive, certified, margin in zip(
                    chunk, y.tolist(), cert.predict.tolist(), cert.correct.tolist(),
                    cert.sensitive.tolist(), cert.certified.tolist(), cert.margin.tolist(),
                    strict=True)
            ])
    return stream.select()
