"""Generators keyed on all 64 bits of a seed, on every device.

``torch.Generator.manual_seed`` on the CPU seeds mt19937 with the low 32 bits of its argument
only, so two 64-bit keys that share those bits draw the same numbers (CUDA's Philox keeps all
64). With one noise stream per (seed, example, stage, block), 32 bits leave collisions between
streams likely at ImageNet scale. :func:`keyed_generator` therefore fills the CPU generator's
mt19937 state with SplitMix64 hashes of the whole key, so every bit of it counts.

No maintained library seeds torch's CPU generator from more than 32 bits, hence this small
piece: it writes the documented fields of torch's CPU generator state (the legacy layout, kept
stable for get_state/set_state compatibility) and is checked against torch's own seeding in the
tests, so a change of layout fails loudly.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["keyed_generator", "noise_key", "reseed"]

_MASK64 = (1 << 64) - 1
_MT_WORDS = 624
# CPU state: uint64 initial seed, int32 left, int32 seeded, uint64 next, uint64 state[624] (one
# 32-bit word each), then cached normal samples (left invalid).
_STATE_OFFSET = 24
_template: torch.Tensor | None = None
# Distinct odd multiples per state pair, so that each (key, counter) input differs.
_COUNTER = np.arange(_MT_WORDS // 2, dtype=np.uint64) * np.uint64(0xD1B54A32D192ED03)
_C1, _C2, _C3 = (np.uint64(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9,
                                       0x94D049BB133111EB))
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def _splitmix64(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def noise_key(seed: int, index: int, stage: int, block: int) -> int:
    """Return the 64-bit key of one noise block of randomized smoothing: a SplitMix64 hash
    chained over its coordinates (seed, example index, sampling stage, block number)."""
    state = 0
    for part in (seed, index, stage, block):
        state = _splitmix64(state ^ (int(part) & _MASK64))
    return state


def _mt_words(key: int) -> np.ndarray:
    """624 mt19937 state words from a 64-bit key: SplitMix64 of (key, counter), the usual way to
    fill a large state from a small seed; every word depends on all 64 bits of the key.
    (uint64 array arithmetic wraps modulo 2^64, as SplitMix64 intends.)"""
    values = _COUNTER ^ np.uint64(_splitmix64(key))
    values += _C1
    values ^= values >> _S30
    values *= _C2
    values ^= values >> _S27
    values *= _C3
    values ^= values >> _S31
    return values.view(np.uint32).astype(np.uint64)


def _cpu_state(key: int) -> torch.Tensor:
    global _template
    if _template is None:
        _template = torch.Generator().manual_seed(0).get_state()
    state = _template.clone()
    view = state.numpy()  # shares the tensor's memory
    view[:8].view("<u8")[0] = key
    view[8:16].view("<i4")[:] = (1, 1)  # left = 1: the first draw twists the new state
    view[16:24].view("<u8")[0] = 0
    view[_STATE_OFFSET:_STATE_OFFSET + 8 * _MT_WORDS].view("<u8")[:] = _mt_words(key)
    return state


def reseed(generator: torch.Generator, key: int) -> torch.Generator:
    """Seed ``generator`` from all 64 bits of ``key`` and return it."""
    key = int(key) & _MASK64
    if generator.device.type == "cpu":
        generator.set_state(_cpu_state(key))
    else:
        generator.manual_seed(key)
    return generator


def keyed_generator(key: int, device: str | torch.device = "cpu") -> torch.Generator:
    """Return a new generator on ``device`` seeded from all 64 bits of ``key``."""
    return reseed(torch.Generator(device=device), key)
