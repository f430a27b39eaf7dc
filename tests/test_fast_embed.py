"""The matching family's real-batch embedding path (methods/fast_embed.py): the choice, and the compiled
embedding agreeing with eager across fresh networks without recompiling."""
from __future__ import annotations

import pytest
import torch

from ddkit.methods import create_method
from ddkit.methods.fast_embed import COMPILE_MIN_IMAGES, EXACT_ENV, RealEmbedder, choose
from ddkit.methods.matching_ops import fresh_net
from ddkit.models.features import penultimate
from ddkit.utils import compiler

from tests.test_matching_dm import separable

CPU = torch.device("cpu")
HAS = {"bf16_probe": lambda d: "amx_bf16", "compiler_probe": lambda: ("inductor + g++", "")}
HAS_NOT = {"bf16_probe": lambda d: None, "compiler_probe": lambda: (None, "no C++ compiler on PATH")}


@pytest.fixture
def auto(monkeypatch):
    """The automatic choice as a user gets it (the suite sets DDKIT_EXACT=1 for everything else)."""
    monkeypatch.delenv(EXACT_ENV, raising=False)


def test_long_runs_compile_short_ones_do_not(auto):
    long = choose(False, None, None, CPU, COMPILE_MIN_IMAGES, False, **HAS)
    assert long.compile and not long.bf16 and long.why.startswith("fast path:") and "--exact" in long.why
    short = choose(False, None, None, CPU, COMPILE_MIN_IMAGES - 1, False, **HAS)
    assert not short.compile and "too few to pay the first compile" in short.why


def test_exact_env_bn_and_missing_compiler_stay_eager(auto, monkeypatch):
    assert not choose(True, True, True, CPU, 10**9, False, **HAS).compile  # --exact wins over everything
    assert "no C++ compiler" in choose(False, None, None, CPU, 10**9, False, **HAS_NOT).why
    assert "BatchNorm" in choose(False, None, None, CPU, 10**9, True, **HAS).why
    assert not choose(False, None, None, torch.device("cuda"), 10**9, False, **HAS).compile
    monkeypatch.setenv(EXACT_ENV, "1")
    assert not choose(False, None, None, CPU, 10**9, False, **HAS).compile
    assert choose(False, True, None, CPU, 10, False, **HAS).compile  # an explicit flag still wins


def test_bf16_only_when_asked_and_native(auto):
    assert not choose(False, None, None, CPU, 10**9, False, **HAS).bf16  # never by default
    assert choose(False, None, True, CPU, 10, False, **HAS).bf16
    off = choose(False, None, True, CPU, 10, False, **HAS_NOT)
    assert not off.bf16 and "no native bf16" in off.why


def test_eager_path_is_the_plain_embedding_bit_for_bit():
    net = fresh_net("convnet-d2", separable(2, 0), 5, CPU).train().requires_grad_(False)
    x = torch.randn(6, 3, 8, 8)
    got = RealEmbedder(choose(True, None, None, CPU, 0, False))(net, x)
    assert torch.equal(got, penultimate(net, x))


@pytest.mark.skipif(compiler()[0] is None, reason="torch.compile cannot build CPU kernels here")
def test_compiled_embedding_matches_eager_for_every_fresh_network_with_one_graph():
    import torch._dynamo

    torch._dynamo.reset()
    ds = separable(2, 0)
    emb = RealEmbedder(choose(False, True, None, CPU, 0, False))
    x = torch.randn(6, 3, 8, 8)
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for seed in (1, 2, 3):  # DM draws a fresh network every iteration: same graph, other parameters
        net = fresh_net("convnet-d2", ds, seed, CPU).train().requires_grad_(False)
        torch.testing.assert_close(emb(net, x), penultimate(net, x), rtol=1e-4, atol=1e-5)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - before == 1


def test_channels_last_only_on_the_eager_cpu_path_a_user_did_not_pin(auto, monkeypatch):
    short = choose(False, None, None, CPU, 10, False, **HAS)
    assert short.channels_last and not short.compile and "channels-last input" in short.why
    assert short.why.startswith("fast path:") and "--exact" in short.why
    assert choose(False, False, None, CPU, 10**9, False, **HAS).channels_last  # --compile false: still eager NHWC
    assert not choose(False, None, None, CPU, COMPILE_MIN_IMAGES, False, **HAS).channels_last  # compiled
    assert not choose(True, None, None, CPU, 10, False, **HAS).channels_last  # --exact
    assert not choose(False, None, None, torch.device("cuda"), 10, False, **HAS).channels_last
    monkeypatch.setenv(EXACT_ENV, "1")
    assert not choose(False, None, None, CPU, 10, False, **HAS).channels_last


def test_channels_last_embedding_is_the_plain_one_up_to_rounding(auto):
    net = fresh_net("convnet-d3", separable(2, 0, size=32), 7, CPU).train().requires_grad_(False)
    x = torch.randn(16, 3, 32, 32)
    path = choose(False, None, None, CPU, 10, False, **HAS)
    got = RealEmbedder(path)(net, x)
    torch.testing.assert_close(got, penultimate(net, x), rtol=1e-5, atol=1e-5)
    assert x.is_contiguous()  # the caller's batch is not changed


def test_dm_records_its_path_and_the_default_short_run_is_the_exact_run_up_to_rounding(auto):
    ds = separable(6, 0)
    kw = {"ipc": 1, "iterations": 2, "batch_real": 4, "dsa_strategy": "none"}
    default = create_method("dm", **kw)(ds, None, device=CPU, progress=False)
    exact = create_method("dm", exact=True, **kw)(ds, None, device=CPU, progress=False)
    torch.testing.assert_close(default.images, exact.images, rtol=0, atol=1e-4)
    assert default.meta["compute_path"][0].startswith("fast path: fp32 + eager (")
    assert "channels-last input" in default.meta["compute_path"][0]
    assert exact.meta["compute_path"] == ["exact: fp32 eager (--exact)"] * ds.num_classes
