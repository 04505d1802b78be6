"""The experiment report's figures: certified-robustness and certified-cost curves per method
(Figure 2), R1 against max(R1, R2) (Figure 1a/b) and the trade-off of every candidate (Figure
1c; Acc against Rob_cs or against the certified cost). Long titles are wrapped so that no
figure cuts one off."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from csrs.experiment.verdict import method_label
from csrs.report import LABELS, plot_cost_curves, plot_curves

__all__ = ["plot_candidates", "plot_method_cost", "plot_method_curves", "plot_r1_vs_r2", "wrap"]

_MARKERS = {"cohen": "x", "cohen-r": "s", "csrs": "o", "macer": "^", "margin-cs": "D",
            "smoothadv": "v", "smoothadv-cs": "P"}


def wrap(title: str, width: int = 48) -> str:
    """The title in lines of at most ``width`` characters where it can break: at spaces, and
    after the ';' and ',' of a long cost spec."""
    lines, line = [], ""
    for piece in filter(None, re.findall(r"[^\s;,]*[;,]?\s*", title)):
        if line and len(line + piece.rstrip()) > width:
            lines.append(line.rstrip())
            line = ""
        line += piece
    return "\n".join([*lines, line.rstrip()])


def _first_seed(tests: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    first: dict[str, Any] = {}
    for test in tests:
        first.setdefault(method_label(test["method"]), test["rows"])
    return first


def plot_method_curves(tests: Sequence[Mapping[str, Any]], path: Path, *, metric: str,
                       title: str, eps_max: float) -> Path:
    """Figure 2: one metric over eps, one line per method (its first seed)."""
    return plot_curves(_first_seed(tests), path, metrics=(metric,), eps_max=eps_max,
                       title=wrap(title))


def plot_method_cost(tests: Sequence[Mapping[str, Any]], path: Path, *, title: str,
                     eps_max: float) -> Path | None:
    """The certified cost over eps, one colour per method (its first seed)."""
    return plot_cost_curves(_first_seed(tests), path, eps_max=eps_max, title=wrap(title))


def plot_r1_vs_r2(tests: Sequence[Mapping[str, Any]], path: Path, *, title: str,
                  eps_max: float) -> Path:
    """Figure 1a/b: Rob_cs from R1 alone against Rob_cs from max(R1, R2), per method."""
    return plot_curves(_first_seed(tests), path, metrics=("rob_cs", "rob_cs_std"),
                       eps_max=eps_max, title=wrap(title))


def _settings(items: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], list]:
    groups: dict[tuple[str, str], list] = {}
    for item in items:
        groups.setdefault((item["dataset"], item["cost"]), []).append(item)
    return groups


def _finite(values: list[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and np.isfinite(v)]


def plot_candidates(candidates: Sequence[Mapping[str, Any]], path: Path, *, x: str,
                    split: str) -> Path | None:
    """Acc against ``x`` ("rob_cs" or "cert_cost") of every candidate on ``split``, one panel
    per setting, one marker per method, the chosen candidates circled and Cohen's Acc (the mean
    over its seeds) dashed inside the y-range; None without candidates besides Cohen's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {key: items for key, items in _settings(candidates).items()
              if any(item["method"] != "cohen" for item in items)}
    if not groups:
        return None
    columns = min(2, len(groups))
    rows = -(-len(groups) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.4 * columns, 4.4 * rows),
                                squeeze=False)
    for axis in axes.flat[len(groups):]:
        axis.set_visible(False)
    for axis, ((dataset, cost), items) in zip(axes.flat, groups.items(), strict=False):
        for method in dict.fromkeys(item["method"] for item in items):
            points = [item for item in items if item["method"] == method]
            axis.scatter([p[x] for p in points], [p["acc"] for p in points],
                         marker=_MARKERS.get(method.partition("@")[0], "*"),
                         label=method_label(method))
        chosen = [item for item in items if item.get("chosen") and item["method"] != "cohen"]
        if chosen:
            axis.scatter([c[x] for c in chosen], [c["acc"] for c in chosen], s=160,
                         facecolors="none", edgecolors="black", linewidths=1.2, label="chosen")
        accs = _finite([item["acc"] for item in items])
        reference = _finite([item["acc"] for item in items if item["method"] == "cohen"])
        if reference:
            level = float(np.mean(reference))
            axis.axhline(level, color="gray", lw=0.9, ls="--", label="Cohen's Acc")
            accs.append(level)
        if accs:
            pad = max(0.01, 0.08 * (max(accs) - min(accs)))
            axis.set_ylim(min(accs) - pad, max(accs) + pad)
        axis.set_title(wrap(f"{dataset}, cost '{cost}'", 40), fontsize=9)
        axis.set_xlabel(f"{LABELS[x]} ({split})")
        axis.set_ylabel(f"Acc ({split})")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    better = "right" if x == "rob_cs" else "left"
    figure.suptitle(f"Every candidate on the {split}: Acc against {LABELS[x]} ({better} and "
                    f"up is better)", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
