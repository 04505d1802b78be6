"""Cost matrices: construction, the spec language, files, and every invalid spec."""

import json

import numpy as np
import pytest

from csrs import CostMatrix


def test_seedwise_costs_every_other_class():
    cm = CostMatrix.seedwise(5, [3])
    assert cm.costly(3) == [0, 1, 2, 4]
    assert cm.costly(0) == []
    assert cm.is_sensitive(3) and not cm.is_sensitive(0)
    assert cm.sensitive_classes == [3]


def test_pairwise_costs_only_listed_targets():
    cm = CostMatrix.pairwise(10, {3: [5, 8]})
    assert cm.costly(3) == [5, 8]
    assert cm.matrix.sum() == 2


@pytest.mark.parametrize("spec, expected", [
    ("3", {3: [0, 1, 2, 4, 5]}),
    ("2,4", {2: [0, 1, 3, 4, 5], 4: [0, 1, 2, 3, 5]}),
    ("3->5", {3: [5]}),
    ("3->2,4,5", {3: [2, 4, 5]}),
    ("3->5;1->2", {3: [5], 1: [2]}),
    (" 3 -> 5 ; 1 -> 0 , 2 ", {3: [5], 1: [0, 2]}),
])
def test_parse_spec_language(spec, expected):
    cm = CostMatrix.parse(spec, 6)
    for seed in range(6):
        assert cm.costly(seed) == expected.get(seed, [])


def test_parse_class_names():
    cm = CostMatrix.parse("malignant->benign", 2, ["malignant", "benign"])
    assert cm.costly(0) == [1] and cm.costly(1) == []
    assert "malignant -> benign" in str(cm)


def test_spec_round_trip():
    cm = CostMatrix.parse("3->5,8;7", 10)
    assert CostMatrix.parse(cm.spec(), 10) == cm
    assert "3->5,8" in repr(cm)


@pytest.mark.parametrize("spec, token", [
    ("3->12", "12"),
    ("12", "12"),
    ("3->3", "3->3"),
    ("", "empty"),
    ("3->", "3->"),
    ("3->5;;1", "empty rule"),
    ("3,,4", "empty class"),
    ("cat->dog", "cat"),
    ("->5", "missing class"),
])
def test_invalid_specs_name_the_bad_token(spec, token):
    with pytest.raises(ValueError, match=None) as error:
        CostMatrix.parse(spec, 10)
    assert token in str(error.value)
    assert "\n" not in str(error.value)


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="unknown class 'cat'.*malignant"):
        CostMatrix.parse("cat->benign", 2, ["malignant", "benign"])


@pytest.mark.parametrize("matrix, message", [
    ([[0, 1, 0], [1, 0, 1]], "square"),
    ([[0, 2], [1, 0]], "binary"),
    ([[1, 0], [0, 0]], "diagonal"),
    ([[0, 0.5], [0, 0]], "binary"),
])
def test_invalid_matrices(matrix, message):
    with pytest.raises(ValueError, match=message):
        CostMatrix(matrix)


def test_matrix_files(tmp_path):
    matrix = np.zeros((4, 4), dtype=int)
    matrix[1, 2] = matrix[3, 0] = 1
    np.save(tmp_path / "c.npy", matrix)
    (tmp_path / "c.json").write_text(json.dumps(matrix.tolist()))
    np.savetxt(tmp_path / "c.csv", matrix, delimiter=",", fmt="%d")
    for name in ("c.npy", "c.json", "c.csv"):
        cm = CostMatrix.parse(str(tmp_path / name), 4)
        assert cm.costly(1) == [2] and cm.costly(3) == [0]
    with pytest.raises(ValueError, match="does not exist"):
        CostMatrix.parse(str(tmp_path / "missing.csv"), 4)
    with pytest.raises(ValueError, match="data has 5 classes"):
        CostMatrix.parse(str(tmp_path / "c.npy"), 5)


def test_matrix_is_read_only():
    cm = CostMatrix.seedwise(3, [0])
    with pytest.raises(ValueError):
        cm.matrix[0, 1] = 0
