"""Cost matrices: what each (seed class j -> predicted class k) misclassification costs.

``C[j, k] >= 0`` is the cost of predicting ``k`` for an input of class ``j``; the diagonal is zero.
``Omega_j = {k : C[j, k] > 0}`` is the costly set of seed class ``j``; a class with an empty costly
set is non-sensitive. A 0/1 matrix is the paper's binary setting (Section 2); real values are the
2025 version's (docs/theory.md#real-valued-costs).

The spec language of :meth:`CostMatrix.parse` (a missing weight is 1, so every binary spec means
what it always meant):

- ``"3"``              seedwise: every misclassification of class 3 costs 1;
- ``"3:5"``            seedwise with a weight: every misclassification of class 3 costs 5;
- ``"2,4"``            several seedwise seeds (``"2:3,4"`` with weights);
- ``"3->5"``           pairwise: only 3 -> 5 costs (1);
- ``"3->5:10,8:2"``    pairwise with weights: 3 -> 5 costs 10, 3 -> 8 costs 2;
- rules joined by ``;``: ``"malignant->benign:10; benign->malignant:1"``; class names may replace
  numbers. A later rule overrides an earlier one on the pairs they share, so ``"3:5; 3->8:10"``
  means every error of 3 costs 5 except 3 -> 8, which costs 10.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["CostMatrix", "format_cost"]


def format_cost(value: float) -> str:
    """Return the shortest text that parses back to ``value`` exactly ("10", "0.5", "2.25")."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


class CostMatrix:
    """An m x m matrix of non-negative real costs with a zero diagonal."""

    def __init__(self, matrix: Sequence[Sequence[float]] | np.ndarray,
                 class_names: Sequence[str] | None = None):
        try:
            array = np.asarray(matrix, dtype=float)
        except (TypeError, ValueError):
            raise ValueError("cost matrix must be a square array of numbers") from None
        if array.ndim != 2 or array.shape[0] != array.shape[1]:
            raise ValueError(f"cost matrix must be square (m x m); got shape {array.shape}")
        if array.shape[0] < 2:
            raise ValueError(f"cost matrix needs at least 2 classes; got {array.shape[0]}")
        bad = np.argwhere(~np.isfinite(array) | (array < 0))
        if bad.size:
            j, k = (int(v) for v in bad[0])
            raise ValueError(f"cost matrix entry C[{j},{k}] = {float(array[j, k])!r} must be "
                             f"a finite number >= 0")
        diagonal = np.flatnonzero(np.diag(array))
        if diagonal.size:
            j = int(diagonal[0])
            raise ValueError(f"cost matrix diagonal must be zero; C[{j},{j}] = "
                             f"{format_cost(array[j, j])} (a class cannot be costly to itself)")
        self._matrix = array + 0.0  # a copy, and -0.0 becomes 0.0
        self._matrix.setflags(write=False)
        self._mask = self._matrix > 0
        self._mask.setflags(write=False)
        if class_names is not None and len(class_names) != self.num_classes:
            raise ValueError(f"got {len(class_names)} class names for {self.num_classes} classes")
        self.class_names = list(class_names) if class_names is not None else None

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def seedwise(cls, num_classes: int, seeds: Iterable[int], *, cost: float = 1.0,
                 class_names: Sequence[str] | None = None) -> CostMatrix:
        """Every misclassification of each seed class costs ``cost`` (|Omega_y| = m - 1)."""
        matrix = np.zeros((num_classes, num_classes))
        for seed in seeds:
            _check_class(seed, num_classes, str(seed))
            matrix[seed, :] = cost
            matrix[seed, seed] = 0
        return cls(matrix, class_names)

    @classmethod
    def pairwise(cls, num_classes: int, rules: Mapping[int, Iterable[int] | Mapping[int, float]],
                 class_names: Sequence[str] | None = None) -> CostMatrix:
        """Only the listed seed -> target pairs cost: ``{3: [5, 8]}`` (cost 1 each) or
        ``{3: {5: 10, 8: 2}}`` (real costs)."""
        matrix = np.zeros((num_classes, num_classes))
        for seed, targets in rules.items():
            _check_class(seed, num_classes, str(seed))
            weights = targets if isinstance(targets, Mapping) else dict.fromkeys(targets, 1.0)
            for target, weight in weights.items():
                _check_class(target, num_classes, f"{seed}->{target}")
                if target == seed:
                    raise ValueError(f"cost rule '{seed}->{target}': class {seed} cannot be "
                                     f"costly to itself")
                matrix[seed, target] = weight
        return cls(matrix, class_names)

    @classmethod
    def parse(cls, spec: str, num_classes: int,
              class_names: Sequence[str] | None = None) -> CostMatrix:
        """Parse a cost spec (see the module docstring), or load a .csv/.json/.npy matrix file."""
        if not isinstance(spec, str):
            raise ValueError(f"cost spec must be a string; got {type(spec).__name__}")
        text = spec.strip()
        if text.lower().endswith((".csv", ".json", ".npy")):
            return cls.load(text, num_classes=num_classes, class_names=class_names)
        if not text:
            raise ValueError("cost spec is empty; expected e.g. '3', '3->5', '3->5:10,8:2' or "
                             "'3->2,4;7->1'")
        matrix = np.zeros((num_classes, num_classes))
        for rule in text.split(";"):
            rule = rule.strip()
            if not rule:
                raise ValueError(f"cost spec '{spec}': empty rule between ';'")
            if "->" in rule:
                seed_text, _, targets_text = rule.partition("->")
                seed = _parse_class(seed_text, num_classes, class_names, rule)
                for item in _split_list(targets_text, rule):
                    target_text, weight = _split_weight(item, rule)
                    target = _parse_class(target_text, num_classes, class_names, rule)
                    if target == seed:
                        raise ValueError(f"cost rule '{rule}': class {seed_text.strip()} cannot "
                                         f"be costly to itself")
                    matrix[seed, target] = weight
            else:
                for item in _split_list(rule, rule):
                    seed_text, weight = _split_weight(item, rule)
                    seed = _parse_class(seed_text, num_classes, class_names, rule)
                    matrix[seed, :] = weight
                    matrix[seed, seed] = 0
        return cls(matrix, class_names)

    @classmethod
    def load(cls, path: str | Path, num_classes: int | None = None,
             class_names: Sequence[str] | None = None) -> CostMatrix:
        """Load a matrix of real costs from a .csv (comma-separated rows), .json (list of rows)
        or .npy file."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"cost matrix file '{path}' does not exist")
        suffix = path.suffix.lower()
        try:
            if suffix == ".npy":
                array = np.load(path, allow_pickle=False)
            elif suffix == ".json":
                array = np.asarray(json.loads(path.read_text()), dtype=float)
            else:
                array = np.loadtxt(path, delimiter=",", ndmin=2)
        except (ValueError, OSError, TypeError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
            raise ValueError(f"cost matrix file '{path}' could not be read: {first}") from None
        try:
            matrix = cls(array, class_names)
        except ValueError as error:
            raise ValueError(f"cost matrix file '{path}': {error}") from None
        if num_classes is not None and matrix.num_classes != num_classes:
            raise ValueError(f"cost matrix file '{path}' is {matrix.num_classes}x"
                             f"{matrix.num_classes}; the data has {num_classes} classes")
        return matrix

    # -- queries ------------------------------------------------------------------------------
    @property
    def matrix(self) -> np.ndarray:
        """The read-only float matrix C of costs."""
        return self._matrix

    @property
    def mask(self) -> np.ndarray:
        """The read-only boolean matrix of costly pairs: ``mask[j, k]`` iff k is in Omega_j."""
        return self._mask

    @property
    def num_classes(self) -> int:
        return self._matrix.shape[0]

    @property
    def is_binary(self) -> bool:
        """Whether every cost is 0 or 1 (the paper's 2023 setting)."""
        return bool(np.isin(self._matrix, (0.0, 1.0)).all())

    def row(self, y: int) -> np.ndarray:
        """C[y]: the read-only costs of predicting each class for an input of class ``y``."""
        _check_class(y, self.num_classes, str(y))
        return self._matrix[y]

    def costly(self, y: int) -> list[int]:
        """Omega_y: sorted costly target classes of seed class ``y`` (empty if non-sensitive)."""
        _check_class(y, self.num_classes, str(y))
        return [int(k) for k in np.flatnonzero(self._mask[y])]

    def costly_above(self, y: int, threshold: float) -> list[int]:
        """{k : C[y][k] > threshold}: the classes whose prediction costs more than
        ``threshold`` ("kappa(eps) <= threshold" is the binary certificate for this set)."""
        _check_class(y, self.num_classes, str(y))
        if not (isinstance(threshold, (int, float)) and math.isfinite(threshold)
                and threshold >= 0):
            raise ValueError(f"cost threshold must be a finite number >= 0; got {threshold!r}")
        return [int(k) for k in np.flatnonzero(self._matrix[y] > threshold)]

    def is_sensitive(self, y: int) -> bool:
        """Whether seed class ``y`` has at least one costly target."""
        _check_class(y, self.num_classes, str(y))
        return bool(self._mask[y].any())

    @property
    def sensitive_classes(self) -> list[int]:
        return [int(j) for j in np.flatnonzero(self._mask.any(axis=1))]

    def to_list(self) -> list[list[float]]:
        """The matrix as nested lists (ints for a binary matrix), for checkpoints and JSON."""
        if self.is_binary:
            return self._matrix.astype(int).tolist()
        return self._matrix.tolist()

    def spec(self) -> str:
        """A spec string that :meth:`parse` maps back to this matrix (numbers, not names)."""
        rules = []
        for seed in self.sensitive_classes:
            targets = self.costly(seed)
            weights = {float(self._matrix[seed, k]) for k in targets}
            if len(targets) == self.num_classes - 1 and len(weights) == 1:
                rules.append(str(seed) + _weight_suffix(weights.pop()))
            else:
                items = [f"{k}{_weight_suffix(self._matrix[seed, k])}" for k in targets]
                rules.append(f"{seed}->{','.join(items)}")
        return ";".join(rules)

    def _name(self, k: int) -> str:
        return self.class_names[k] if self.class_names else str(k)

    def __str__(self) -> str:
        if not self.sensitive_classes:
            return "no costly errors"
        binary = self.is_binary

        def target(seed: int, k: int) -> str:
            weight = "" if binary else f" ({format_cost(self._matrix[seed, k])})"
            return self._name(k) + weight

        parts = []
        for seed in self.sensitive_classes:
            targets = self.costly(seed)
            weights = {float(self._matrix[seed, k]) for k in targets}
            if len(targets) == self.num_classes - 1 > 1 and len(weights) == 1:
                weight = "" if binary else f" ({format_cost(weights.pop())})"
                parts.append(f"{self._name(seed)} -> any other class{weight}")
            else:
                parts.append(f"{self._name(seed)} -> "
                             f"{', '.join(target(seed, k) for k in targets)}")
        return "; ".join(parts)

    def __repr__(self) -> str:
        return f"CostMatrix({self.spec()!r}, num_classes={self.num_classes})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CostMatrix) and np.array_equal(self._matrix, other._matrix)

    def __hash__(self) -> int:
        return hash(self._matrix.tobytes())


def _weight_suffix(weight: float) -> str:
    return "" if weight == 1 else f":{format_cost(weight)}"


def _check_class(k: int, num_classes: int, token: str) -> None:
    if not isinstance(k, (int, np.integer)) or not 0 <= k < num_classes:
        raise ValueError(f"cost rule '{token}': class {k} does not exist; "
                         f"classes are 0..{num_classes - 1}")


def _split_list(text: str, rule: str) -> list[str]:
    items = [item.strip() for item in text.split(",")]
    if any(not item for item in items):
        raise ValueError(f"cost rule '{rule}': empty class in '{text.strip()}'")
    return items


def _split_weight(item: str, rule: str) -> tuple[str, float]:
    """Split ``"class:weight"`` into the class text and its weight (1 when absent)."""
    if ":" not in item:
        return item, 1.0
    name, _, text = item.rpartition(":")
    try:
        weight = float(text)
    except ValueError:
        weight = math.nan
    if not text.strip() or not math.isfinite(weight) or weight < 0:
        raise ValueError(f"cost rule '{rule}': weight '{text.strip()}' of '{name.strip()}' must "
                         f"be a finite number >= 0")
    return name, weight


def _parse_class(token: str, num_classes: int, class_names: Sequence[str] | None,
                 rule: str) -> int:
    token = token.strip()
    if not token:
        raise ValueError(f"cost rule '{rule}': missing class")
    if class_names is not None and token in class_names:
        return list(class_names).index(token)
    try:
        k = int(token)
    except ValueError:
        known = f"known names: {', '.join(class_names)}" if class_names else "no class names"
        raise ValueError(f"cost rule '{rule}': unknown class '{token}' ({known})") from None
    if not 0 <= k < num_classes:
        raise ValueError(f"cost rule '{rule}': class {k} does not exist; "
                         f"classes are 0..{num_classes - 1}")
    return k
