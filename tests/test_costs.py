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
    ([[0, -2], [1, 0]], r"C\[0,1\] = -2.0 must be a finite number >= 0"),
    ([[0, float("nan")], [1, 0]], r"C\[0,1\] = nan"),
    ([[0, 1], [float("inf"), 0]], r"C\[1,0\] = inf"),
    ([[1, 0], [0, 0]], r"diagonal must be zero; C\[0,0\] = 1"),
    ([[0, 0.5], [0, 2.5]], r"C\[1,1\] = 2.5"),
    ([["a", 1], [0, 0]], "array of numbers"),
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


# -- real-valued costs (docs/theory.md#real-valued-costs) -------------------------------------
@pytest.mark.parametrize("spec, row3", [
    ("3->5:10,8:2", {5: 10.0, 8: 2.0}),
    ("3->5,8:2", {5: 1.0, 8: 2.0}),
    ("3:5", {k: 5.0 for k in range(10) if k != 3}),
    ("3:5; 3->8:10", {**{k: 5.0 for k in range(10) if k != 3}, 8: 10.0}),
    ("3->5:0.25", {5: 0.25}),
    ("3->5:1e1", {5: 10.0}),
])
def test_parse_weights(spec, row3):
    cm = CostMatrix.parse(spec, 10)
    expected = np.zeros(10)
    for k, value in row3.items():
        expected[k] = value
    assert np.array_equal(cm.row(3), expected)
    assert cm.costly(3) == sorted(k for k, v in row3.items() if v > 0)
    assert not cm.is_binary or set(row3.values()) == {1.0}


def test_missing_weight_means_one_so_binary_specs_are_unchanged():
    for spec in ("3", "2,4", "3->5", "3->2,4,5", "3->5;1->2"):
        cm = CostMatrix.parse(spec, 6)
        assert cm.is_binary
        assert np.array_equal(cm.matrix, cm.mask.astype(float))
        assert cm.to_list() == cm.mask.astype(int).tolist()


def test_named_real_valued_spec():
    cm = CostMatrix.parse("malignant->benign:10; benign->malignant:1", 2,
                          ["malignant", "benign"])
    assert cm.matrix.tolist() == [[0.0, 10.0], [1.0, 0.0]]
    assert str(cm) == "malignant -> benign (10); benign -> malignant (1)"


@pytest.mark.parametrize("spec", ["3->5:10,8:2;7", "3:5;0->1:0.5,2:3", "3:2.5", "1->0:7;0:3"])
def test_real_spec_round_trip(spec):
    cm = CostMatrix.parse(spec, 10)
    assert CostMatrix.parse(cm.spec(), 10) == cm


@pytest.mark.parametrize("spec, token", [
    ("3->5:-1", "weight '-1' of '5'"),
    ("3->5:nan", "weight 'nan'"),
    ("3->5:inf", "weight 'inf'"),
    ("3->5:ten", "weight 'ten'"),
    ("3->5:", "weight ''"),
    ("3:-2", "weight '-2' of '3'"),
])
def test_malformed_weights_name_the_entry(spec, token):
    with pytest.raises(ValueError) as error:
        CostMatrix.parse(spec, 10)
    assert token in str(error.value) and "finite number >= 0" in str(error.value)
    assert "\n" not in str(error.value)


def test_real_valued_matrix_files(tmp_path):
    matrix = np.zeros((3, 3))
    matrix[0, 1], matrix[0, 2], matrix[2, 0] = 10.0, 2.5, 1.0
    np.save(tmp_path / "c.npy", matrix)
    (tmp_path / "c.json").write_text(json.dumps(matrix.tolist()))
    np.savetxt(tmp_path / "c.csv", matrix, delimiter=",")
    for name in ("c.npy", "c.json", "c.csv"):
        assert np.array_equal(CostMatrix.parse(str(tmp_path / name), 3).matrix, matrix)
    matrix[1, 2] = -1
    np.savetxt(tmp_path / "bad.csv", matrix, delimiter=",")
    with pytest.raises(ValueError, match=r"bad.csv': cost matrix entry C\[1,2\] = -1.0"):
        CostMatrix.parse(str(tmp_path / "bad.csv"), 3)


def test_costly_above_is_the_binary_set_of_a_cost_level():
    cm = CostMatrix.parse("3->5:10,8:2,1:1", 10)
    assert cm.costly_above(3, 0) == [1, 5, 8]
    assert cm.costly_above(3, 1) == [5, 8]
    assert cm.costly_above(3, 2) == [5]
    assert cm.costly_above(3, 10) == []
    with pytest.raises(ValueError, match="threshold"):
        cm.costly_above(3, -1)
