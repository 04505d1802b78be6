"""Does the claim hold here? The report's verdicts, as pure functions of the summary rows
(one per setting and method, means over seeds with ``<metric>_sd`` from two seeds on).

The 2023 claim (CS-RS), per setting:

- Rob_cs higher than the best cost-blind method's (Cohen, MACER, SmoothAdv and their variants)
  by more than ``gain_bar``, among those within ``acc_drop`` of Cohen's Acc (matched accuracy:
  a model that collapsed to one class can have a high Rob_cs and no use);
- Rob_cs at least Cohen-R's;
- Acc at most ``acc_drop`` below Cohen's.

The 2025 claim (Margin-CS), per setting:

- Acc at most ``acc_drop`` below Cohen's;
- the lowest certified cost Cost_cert(eps) of the other methods within ``acc_drop`` of Cohen's
  Acc (a reading of Margin-CS is no rival of the other). Where no other method is within the
  budget, all of them are the rivals, and the bullet says so.

With several seeds, every comparison also says whether the difference of the means exceeds the
spread over seeds, taken as the sum of the two sample standard deviations (|mean_a - mean_b| >
sd_a + sd_b). A claim that one method beats another (the Rob_cs gains, the lowest cost) holds
only when its difference clears both the bar and that spread; one that passes the bar within the
spread "holds on the means only". A claim of no loss (the accuracy bars) holds when the bar is
met; the spread is then only reported. Differences are rounded to the three decimals shown.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from csrs.experiment.config import COST_BLIND

__all__ = ["METHOD_LABELS", "method_label", "relation", "verdict_2023", "verdict_2025"]

METHOD_LABELS = {"cohen": "Cohen", "cohen-r": "Cohen-R", "macer": "MACER", "csrs": "CS-RS",
                 "margin-cs": "Margin-CS", "smoothadv": "SmoothAdv",
                 "smoothadv-cs": "SmoothAdv-CS"}

Row = Mapping[str, Any]


def method_label(method: str) -> str:
    """The paper's name of a method, its variant's tag kept: "CS-RS@lam3"."""
    base, at, tag = method.partition("@")
    return METHOD_LABELS.get(base, base) + at + tag



def _base(method: str) -> str:
    return method.partition("@")[0]


def _matched(rows: Sequence[Row], cohen: Row | None, acc_drop: float) -> tuple[list[Row], str]:
    """The rows within ``acc_drop`` of Cohen's Acc (all rows where none is), and the words that
    say which."""
    within = [] if cohen is None or not _known(cohen, "acc") else [
        row for row in rows if _known(row, "acc")
        and round(cohen["acc"] - row["acc"], 3) <= acc_drop]
    if within:
        return within, f"within {acc_drop:g} of Cohen's Acc"
    return list(rows), f"none within {acc_drop:g} of Cohen's Acc, so of all"


def _known(row: Row, metric: str) -> bool:
    value = row.get(metric)
    return isinstance(value, (int, float)) and not math.isnan(value)


def relation(difference: float, other: str) -> str:
    """"0.042 below Cohen's", "0.013 above Cohen's" or "equal to Cohen's" (at 3 decimals)."""
    shown = round(difference, 3)
    if shown == 0:
        return f"equal to {other}"
    return f"{abs(shown):.3f} {'above' if shown > 0 else 'below'} {other}"


def _value(row: Row, metric: str) -> str:
    """"0.628" with one seed, "0.628 ± 0.012" with several."""
    sd = row.get(f"{metric}_sd")
    return f"{row[metric]:.3f}" + (f" ± {sd:.3f}" if isinstance(sd, float) else "")


def _spread(ours: Row, other: Row, metric: str) -> float | None:
    """sd_a + sd_b where both rows have one (several seeds), else None."""
    sds = (ours.get(f"{metric}_sd"), other.get(f"{metric}_sd"))
    return sds[0] + sds[1] if all(isinstance(sd, float) for sd in sds) else None


def _compare(ours: Row, other: Row, metric: str, passes: bool, *, gain: bool) -> str:
    """The outcome of one comparison: holds / does not hold, with the spread over seeds."""
    spread = _spread(ours, other, metric)
    if spread is None:
        return "holds" if passes else "does not hold"
    difference = round(abs(ours[metric] - other[metric]), 3)
    separated = difference > round(spread, 3)
    note = (f"({'more' if separated else 'less'} than the spread over seeds, "
            f"{round(spread, 3):.3f})")
    if not passes:
        return f"does not hold {note}"
    if gain and not separated:
        return f"holds on the means only {note}"
    return f"holds {note}"


def _by_setting(summary: Sequence[Row]) -> dict[tuple[str, str], dict[str, Row]]:
    groups: dict[tuple[str, str], dict[str, Row]] = {}
    for row in summary:
        groups.setdefault((row["dataset"], row["cost"]), {})[row["method"]] = row
    return groups


def _accuracy(ours: Row, cohen: Row, acc_drop: float) -> str:
    drop = round(cohen["acc"] - ours["acc"], 3)
    return (f"Acc {_value(ours, 'acc')}, {relation(ours['acc'] - cohen['acc'], 'Cohen')}'s "
            f"{_value(cohen, 'acc')} (bar: at most {acc_drop:g} below): "
            + _compare(ours, cohen, "acc", drop <= acc_drop, gain=False))


def verdict_2023(summary: Sequence[Row], *, gain_bar: float = 0.05,
                 acc_drop: float = 0.03) -> list[str]:
    """One bullet per setting with CS-RS on the 2023 claim (see the module doc)."""
    bullets = []
    for (dataset, cost), rows in _by_setting(summary).items():
        ours = rows.get("csrs")
        if ours is None:
            continue
        parts = []
        blind, which = _matched([row for method, row in rows.items()
                                 if _base(method) in COST_BLIND and _known(row, "rob_cs")],
                                rows.get("cohen"), acc_drop)
        if blind and _known(ours, "rob_cs"):
            best = max(blind, key=lambda row: row["rob_cs"])
            gain = round(ours["rob_cs"] - best["rob_cs"], 3)
            parts.append(f"Rob_cs {_value(ours, 'rob_cs')} vs {_value(best, 'rob_cs')} for the "
                         f"best cost-blind method {which} ({method_label(best['method'])}): "
                         f"{relation(gain, 'it')} (bar: more than {gain_bar:g} above): "
                         + _compare(ours, best, "rob_cs", gain > gain_bar, gain=True))
        if "cohen-r" in rows and _known(ours, "rob_cs") and _known(rows["cohen-r"], "rob_cs"):
            other = rows["cohen-r"]
            difference = round(ours["rob_cs"] - other["rob_cs"], 3)
            parts.append(f"vs Cohen-R's {_value(other, 'rob_cs')}: "
                         f"{relation(difference, 'it')} (bar: at least equal): "
                         + _compare(ours, other, "rob_cs", difference >= 0, gain=True))
        if "cohen" in rows:
            parts.append(_accuracy(ours, rows["cohen"], acc_drop))
        if parts:
            bullets.append(f"- {dataset}, cost '{cost}': " + "; ".join(parts) + ".")
    return bullets


def verdict_2025(summary: Sequence[Row], *, acc_drop: float = 0.02) -> list[str]:
    """One bullet per setting with Margin-CS and Cohen on the 2025 claim (see the module doc)."""
    bullets = []
    for (dataset, cost), rows in _by_setting(summary).items():
        ours, cohen = rows.get("margin-cs"), rows.get("cohen")
        if ours is None or cohen is None:
            continue
        parts = [_accuracy(ours, cohen, acc_drop)]
        others, which = _matched([row for method, row in rows.items()
                                  if _base(method) != "margin-cs" and _known(row, "cert_cost")],
                                 cohen, acc_drop)
        if others and _known(ours, "cert_cost"):
            rival = min(others, key=lambda row: row["cert_cost"])
            difference = round(ours["cert_cost"] - rival["cert_cost"], 3)
            parts.append(f"certified cost {_value(ours, 'cert_cost')} vs "
                         f"{_value(rival, 'cert_cost')} for the best other method {which} "
                         f"({method_label(rival['method'])}): {relation(difference, 'it')} (bar: "
                         f"the lowest): "
                         + _compare(ours, rival, "cert_cost", difference <= 0, gain=True))
        if _known(ours, "recall"):
            parts.append(f"seed-class recall {_value(ours, 'recall')} (Cohen "
                         + (_value(cohen, "recall") if _known(cohen, "recall") else "-") + ")")
        bullets.append(f"- {dataset}, cost '{cost}': " + "; ".join(parts) + ".")
    return bullets
