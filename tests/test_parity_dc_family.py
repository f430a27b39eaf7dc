"""bench/parity/common.siamese_copy (issue #27, DM/DSA IPC 1 parity): the one change the DC-family driver makes
from outside to the official DiffAugment. Its Siamese broadcast `r[:] = r[0]` is refused by torch on a one-image
batch; under the mode it runs and writes what the line means (row 0 everywhere), and on larger batches the mode
changes nothing. The pattern below is written here from the torch error, not taken from the official code."""
from __future__ import annotations

import pytest
import torch

from tests.conftest import load_bench_script

common = load_bench_script("parity/common.py")


def _siamese(draw: torch.Tensor) -> torch.Tensor:
    draw[:] = draw[0]  # the broadcast that shares one random draw across the batch
    return draw


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 1, 1)])
def test_one_image_broadcast_is_refused_by_torch_and_runs_under_the_mode(shape):
    with pytest.raises(RuntimeError, match="single memory location"):
        _siamese(torch.rand(shape))  # if torch ever accepts it, the mode is no longer needed: say so in the JSON
    draw = torch.rand(shape)
    kept = draw.clone()
    mode = common.siamese_copy()
    with mode:
        out = _siamese(draw)
    assert torch.equal(out, kept) and mode.calls == 1


@pytest.mark.parametrize("shape", [(4, 1, 1, 1), (5, 1, 1), (3, 2, 3)])
def test_larger_batches_are_unchanged_by_the_mode(shape):
    g = torch.Generator().manual_seed(0)
    plain = _siamese(torch.rand(shape, generator=g))
    g.manual_seed(0)
    with common.siamese_copy():
        moded = _siamese(torch.rand(shape, generator=g))
    assert torch.equal(plain, moded)
    assert torch.equal(moded, moded[:1].expand_as(moded))  # every row is row 0's draw


def test_other_assignments_are_left_alone():
    x, v = torch.zeros(3, 2), torch.ones(2)
    mode = common.siamese_copy()
    with mode:
        x[1] = v  # a value of its own memory: not cloned
        x[2] = 5.0
        y = torch.arange(4)[1:]  # other calls pass through
    assert mode.calls == 0
    assert x.tolist() == [[0, 0], [1, 1], [5, 5]] and y.tolist() == [1, 2, 3]
