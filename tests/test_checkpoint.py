"""A damaged checkpoint file is refused in one line that says what is wrong with it."""

import pytest
import torch

from csrs.checkpoint import CheckpointError, load_checkpoint


@pytest.fixture(scope="module")
def good_bytes(digits_checkpoint):
    return digits_checkpoint.read_bytes()


def _flip_weights(raw: bytes) -> bytes:
    damaged = bytearray(raw)
    middle = len(damaged) // 2
    damaged[middle:middle + 64] = bytes(64)
    return bytes(damaged)


@pytest.mark.parametrize("damage, reason", [
    (lambda raw: b"", "the file is empty (0 bytes)"),
    (lambda raw: raw[:len(raw) // 2], "the file is truncated"),
    (lambda raw: raw[:-10], "the file is truncated"),
    (_flip_weights, "fails its checksum"),
    (lambda raw: b"not a checkpoint at all", "it is not a torch file"),
])
def test_a_damaged_checkpoint_says_so_in_one_line(tmp_path, good_bytes, damage, reason):
    path = tmp_path / "model.pt"
    path.write_bytes(damage(good_bytes))
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert reason in message and str(path) in message and "\n" not in message
    for torch_words in ("pop from empty list", "miniz", "PytorchStreamReader"):
        assert torch_words not in message


def test_a_truncated_old_format_file_is_named_as_such(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"net": torch.zeros(100)}, path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)


def test_a_file_with_code_is_refused_saying_why(tmp_path):
    path = tmp_path / "code.pt"
    torch.save({"anything": CheckpointError}, path)
    with pytest.raises(CheckpointError, match="weights-only loading refuses") as error:
        load_checkpoint(path)
    assert "\n" not in str(error.value)


def test_an_intact_checkpoint_still_loads(digits_checkpoint):
    assert load_checkpoint(digits_checkpoint).meta["arch"] == "linear"
