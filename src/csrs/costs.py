"""Binary cost matrices: which (seed class j -> target class k) misclassifications are costly.

``C[j, k] = 1`` means predicting ``k`` for an input of class ``j`` incurs a cost (Section 2 of the
paper). ``Omega_j = {k : C[j, k] = 1}`` is the costly set of seed class ``j``; a class with an
empty costly set is non-sensitive.

The spec language of :meth:`CostMatrix.parse`:

- ``"3"``         seedwise: every misclassification of class 3 is costly;
- ``"2,4"``       several seedwise seeds;
- ``"3->5"``      pairwise: only 3 -> 5 is costly;
- ``"3->2,4,5"``  pairwise with several targets;
- rules joined by ``;``: ``"3->5;7->2"``; class names may replace numbers: ``"malignant->benign"``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["CostMatrix"]


class CostMatrix:
    """An m x m binary cost matrix with a zero diagonal."""

    def __init__(self, matrix: Sequence[Sequence[int]] | np.ndarray,
                 class_names: Sequence[str] | None = None):
        array = np.asarray(matrix)
        if array.ndim != 2 or array.shape[0] != array.shape[1]:
            raise ValueError(f"cost matrix must be square (m x m); got shape {array.shape}")
        if array.shape[0] < 2:
            raise ValueError(f"cost matrix needs at least 2 classes; got {array.shape[0]}")
        if not np.isin(array, (0, 1)).all():
            bad = array[~np.isin(array, (0, 1))].flat[0]
            raise ValueError(f"cost matrix must be binary (0/1); found entry {bad!r}")
        diagonal = np.flatnonzero(np.diag(array))
        if diagonal.size:
            j = int(diagonal[0])
            raise ValueError(f"cost matrix diagonal must be zero; C[{j},{j}] = 1 "
                             f"(a class cannot be costly to itself)")
        self._matrix = array.astype(bool)
        self._matrix.setflags(write=False)
        if class_names is not None and len(class_names) != self.num_classes:
            raise ValueError(f"got {len(class_names)} class names for {self.num_classes} classes")
        self.class_names = list(class_names) if class_names is not None else None

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def seedwise(cls, num_classes: int, seeds: Iterable[int],
                 class_names: Sequence[str] | None = None) -> CostMatrix:
        """Every misclassification of each seed class is costly (|Omega_y| = m - 1)."""
        matrix = np.zeros((num_classes, num_classes), dtype=int)
        for seed in seeds:
            _check_class(seed, num_classes, str(seed))
            matrix[seed, :] = 1
            matrix[seed, seed] = 0
        return cls(matrix, class_names)

    @classmethod
    def pairwise(cls, num_classes: int, rules: Mapping[int, Iterable[int]],
                 class_names: Sequence[str] | None = None) -> CostMatrix:
        """Only the listed seed -> target pairs are costly."""
        matrix = np.zeros((num_classes, num_classes), dtype=int)
        for seed, targets in rules.items():
            _check_class(seed, num_classes, str(seed))
            for target in targets:
                _check_class(target, num_classes, f"{seed}->{target}")
                if target == seed:
                    raise ValueError(f"cost rule '{seed}->{target}': class {seed} cannot be "
                                     f"costly to itself")
                matrix[seed, target] = 1
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
            raise ValueError("cost spec is empty; expected e.g. '3', '3->5' or '3->2,4;7->1'")
        matrix = np.zeros((num_classes, num_classes), dtype=int)
        for rule in text.split(";"):
            rule = rule.strip()
            if not rule:
                raise ValueError(f"cost spec '{spec}': empty rule between ';'")
            if "->" in rule:
                seed_text, _, targets_text = rule.partition("->")
                seed = _parse_class(seed_text, num_classes, class_names, rule)
                targets = [_parse_class(t, num_classes, class_names, rule)
                           for t in _split_list(targets_text, rule)]
                for target in targets:
                    if target == seed:
                        raise ValueError(f"cost rule '{rule}': class {seed_text.strip()} cannot "
                                         f"be costly to itself")
                    matrix[seed, target] = 1
            else:
                for seed_text in _split_list(rule, rule):
                    seed = _parse_class(seed_text, num_classes, class_names, rule)
                    matrix[seed, :] = 1
                    matrix[seed, seed] = 0
        return cls(matrix, class_names)

    @classmethod
    def load(cls, path: str | Path, num_classes: int | None = None,
             class_names: Sequence[str] | None = None) -> CostMatrix:
        """Load a matrix from a .csv (comma-separated rows), .json (list of rows) or .npy file."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"cost matrix file '{path}' does not exist")
        suffix = path.suffix.lower()
        try:
            if suffix == ".npy":
                array = np.load(path, allow_pickle=False)
            elif suffix == ".json":
                array = np.asarray(json.loads(path.read_text()))
            else:
                array = np.loadtxt(path, delimiter=",", ndmin=2)
        except (ValueError, OSError) as error:
            raise ValueError(f"cost matrix file '{path}' could not be read: {error}") from None
        if array.ndim == 2 and np.isin(array, (0, 1)).all():
            array = array.astype(int)
        matrix = cls(array, class_names)
        if num_classes is not None and matrix.num_classes != num_classes:
            raise ValueError(f"cost matrix file '{path}' is {matrix.num_classes}x"
                             f"{matrix.num_classes}; the data has {num_classes} classes")
        return matrix

    @classmethod
    def all_errors(cls, num_classes: int) -> CostMatrix:
        """Standard robustness: every misclassification of every class is costly."""
        return cls.seedwise(num_classes, range(num_classes))

    # -- queries ------------------------------------------------------------------------------
    @property
    def matrix(self) -> np.ndarray:
        """The read-only boolean matrix C."""
        return self._matrix

    @property
    def num_classes(self) -> int:
        return self._matrix.shape[0]

    def costly(self, y: int) -> list[int]:
        """Omega_y: sorted costly target classes of seed class ``y`` (empty if non-sensitive)."""
        _check_class(y, self.num_classes, str(y))
        return [int(k) for k in np.flatnonzero(self._matrix[y])]

    def is_sensitive(self, y: int) -> bool:
        """Whether seed class ``y`` has at least one costly target."""
        _check_class(y, self.num_classes, str(y))
        return bool(self._matrix[y].any())

    @property
    def sensitive_classes(self) -> list[int]:
        return [int(j) for j in np.flatnonzero(self._matrix.any(axis=1))]

    def to_list(self) -> list[list[int]]:
        """The matrix as nested lists of 0/1 (for checkpoints and JSON)."""
        return self._matrix.astype(int).tolist()

    def spec(self) -> str:
        """A spec string that :meth:`parse` maps back to this matrix (numbers, not names)."""
        rules = []
        for seed in self.sensitive_classes:
            targets = self.costly(seed)
            if len(targets) == self.num_classes - 1:
                rules.append(str(seed))
            else:
                rules.append(f"{seed}->{','.join(map(str, targets))}")
        return ";".join(rules)

    def _name(self, k: int) -> str:
        return self.class_names[k] if self.class_names else str(k)

    def __str__(self) -> str:
        if not self.sensitive_classes:
            return "no costly errors"
        parts = []
        for seed in self.sensitive_classes:
            targets = self.costly(seed)
            if len(targets) == self.num_classes - 1 > 1:
                parts.append(f"{self._name(seed)} -> any other class")
            else:
                parts.append(f"{self._name(seed)} -> {', '.join(self._name(k) for k in targets)}")
        return "; ".join(parts)

    def __repr__(self) -> str:
        return f"CostMatrix({self.spec()!r}, num_classes={self.num_classes})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CostMatrix) and np.array_equal(self._matrix, other._matrix)

    def __hash__(self) -> int:
        return hash(self._matrix.tobytes())


def _check_class(k: int, num_classes: int, token: str) -> None:
    if not isinstance(k, (int, np.integer)) or not 0 <= k < num_classes:
        raise ValueError(f"cost rule '{token}': class {k} does not exist; "
                         f"classes are 0..{num_classes - 1}")


def _split_list(text: str, rule: str) -> list[str]:
    items = [item.strip() for item in text.split(",")]
    if any(not item for item in items):
        raise ValueError(f"cost rule '{rule}': empty class in '{text.strip()}'")
    return items


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
