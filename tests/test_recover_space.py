"""The recover family's working space (#26): SRe2L/CDA/DWA optimise in the statistics their official code
normalises with, and the teacher is fed through the exact affine map into the statistics it was trained with."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

from ddkit.data.base import ImageDataset
from ddkit.data.facts import FACTS, working_stats
from ddkit.methods import create_method
from ddkit.methods.recover import WorkingInput, teacher_in_working_space
from ddkit.methods.sre2l import RecoverConfig
from ddkit.teachers import Teacher
from ddkit.utils import make_generator
from tests.conftest import make_toy
from tests.golden_setup import cpu_kind
from tests.test_sre2l import _bn_teacher

#: sets made at edb10e1, before the working space existed (default sre2l/cda/dwa, ipc 2, 6 steps, seed 3, on
#: `_cifar_named()` with a teacher trained on the true statistics); remade by nothing: the record of the past
REFERENCE = Path(__file__).with_name("recover_true_space_reference.safetensors")
OFFICIAL = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))  # SRe2L recover_cifar.py:22-23@8d00cba
TRUE = (FACTS["cifar10"].mean, FACTS["cifar10"].std)


def _cifar_named():
    """The toy images under CIFAR-10's name and true statistics (so the official table applies), and a BN teacher
    trained with those true statistics."""
    toy = make_toy(n_per_class=12, num_classes=4, size=8)
    ds = ImageDataset(toy.images, toy.labels, toy.classes, list(TRUE[0]), list(TRUE[1]), name="cifar10",
                      split="train")
    return ds, Teacher(_bn_teacher(4, 8), "convnet-d1-bn", ds.classes, ds.mean, ds.std, 8)


def _run(method: str, ds, t, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return create_method(method, **kw)(ds, t, device="cpu", progress=False)


def test_the_affine_map_sends_official_space_to_the_teachers_inputs_by_hand():
    """Pixel 0.9 in channel 0: (0.9 − 0.4914)/0.2023 = 2.019772… in SRe2L's space must reach a teacher trained on
    the true statistics as (0.9 − 0.4914)/0.2470 = 1.654251…, the true-space image of the same pixel."""
    net = torch.nn.Identity()
    wi = WorkingInput(net, working_stats(_cifar_named()[0], "sre2l"), TRUE[0], TRUE[1])
    p = torch.tensor([0.9, 0.1, 0.5]).view(1, 3, 1, 1)
    x_off = torch.tensor([(0.9 - 0.4914) / 0.2023, (0.1 - 0.4822) / 0.1994, (0.5 - 0.4465) / 0.2010]).view(1, 3, 1, 1)
    assert float(x_off[0, 0]) == pytest.approx(2.019772, abs=1e-6)
    want = torch.tensor([1.654251, (0.1 - 0.4822) / 0.2435, (0.5 - 0.4465) / 0.2616]).view(1, 3, 1, 1)
    assert torch.allclose(wi(x_off), want, atol=1e-5)
    assert torch.allclose(wi(x_off), (p - torch.tensor(TRUE[0]).view(1, 3, 1, 1)) / torch.tensor(TRUE[1]).view(1, 3, 1, 1),
                          atol=1e-6)
    assert not torch.allclose(x_off, want, atol=1e-2)  # without the map the teacher would see other inputs
    # equal statistics: no map at all, the network itself
    assert teacher_in_working_space(_bn_teacher(), working_stats(_cifar_named()[0], "sre2l", "true"),
                                    TRUE[0], TRUE[1]).__class__ is not WorkingInput


def test_the_teacher_sees_its_own_inputs_at_the_first_step():
    """SRe2L on CIFAR-10 (official space): iteration 0's CE is the teacher's CE on the mapped noise, not on the raw
    official-space noise (what feeding the teacher without the map would give)."""
    ds, t = _cifar_named()
    s = _run("sre2l", ds, t, ipc=1, iterations=1, jitter=0, seed=4)
    x0 = torch.randn(4, 3, 8, 8, generator=make_generator(4, "sre2l", "ipc", 0, "group", 0))
    m_o, s_o = (torch.tensor(v).view(1, 3, 1, 1) for v in OFFICIAL)
    m_t, s_t = (torch.tensor(v).view(1, 3, 1, 1) for v in TRUE)
    net, y = t.model.eval(), torch.arange(4)
    with torch.no_grad():
        mapped = float(F.cross_entropy(net(((x0 * s_o + m_o) - m_t) / s_t), y))
        raw = float(F.cross_entropy(net(x0), y))
    got = s.meta["unit_meta"][0]["ce_first"]
    assert got == pytest.approx(mapped, rel=1e-5) and abs(got - raw) > 1e-3
    ws = s.meta["working_stats"]
    assert ws["norm"] == "official" and ws["std"] == list(OFFICIAL[1]) and ws["teacher_map"] is True
    assert "recover_cifar.py:22-23" in ws["source"]


def test_noise_init_in_pixels_differs_by_the_std_ratio():
    """Same seed, a negligible lr: the official-space image's pixel offsets from the (shared) mean are the true-space
    ones times 0.2023/0.2470 etc. per channel — N(0, 1) is narrower in pixels under SRe2L's statistics."""
    ds, t = _cifar_named()
    kw = dict(ipc=2, iterations=1, lr=1e-9, seed=2)
    off, tru = _run("sre2l", ds, t, norm="official", **kw), _run("sre2l", ds, t, norm="true", **kw)
    m = torch.tensor(TRUE[0]).view(1, 3, 1, 1)  # CIFAR-10's official mean is the true one
    a, b = off.images - m, tru.images - m
    inside = (off.images > 0) & (off.images < 1) & (tru.images > 0) & (tru.images < 1) & (b.abs() > 1e-2)
    ratio = (a / b).where(inside, torch.nan)
    for ch in range(3):
        r = ratio[:, ch][inside[:, ch]]
        assert len(r) > 50
        assert torch.allclose(r, torch.full_like(r, OFFICIAL[1][ch] / TRUE[1][ch]), atol=1e-4)
    assert off.meta["working_stats"]["norm"] == "official" and tru.meta["working_stats"]["norm"] == "true"


@pytest.mark.parametrize("method", ["sre2l", "cda", "dwa"])
def test_norm_true_gives_the_bytes_made_before_the_working_space(method):
    """norm=true with a teacher trained on the true statistics is the previous behaviour: the recorded bytes on the
    recorded kind of CPU (tests/golden_setup.cpu_kind), to 1e-5 on others; the default (official) differs."""
    ds, t = _cifar_named()
    ref = load_file(str(REFERENCE))
    with safe_open(str(REFERENCE), framework="pt") as f:
        recorded_kind = f.metadata()["cpu_kind"]
    extra = {"first_step": "clean"} if method == "dwa" else {}  # DWA's default when the bytes were recorded
    s = _run(method, ds, t, ipc=2, iterations=6, seed=3, norm="true", **extra)
    assert torch.equal(s.labels, ref[f"{method}.labels"])
    if cpu_kind() == recorded_kind:
        assert torch.equal(s.images, ref[f"{method}.images"])
    else:
        assert torch.allclose(s.images, ref[f"{method}.images"], atol=1e-5, rtol=0)
    assert s.meta["working_stats"]["teacher_map"] is False
    new = _run(method, ds, t, ipc=2, iterations=6, seed=3)
    assert not torch.allclose(new.images, ref[f"{method}.images"], atol=1e-3)


def test_dwa_works_in_its_own_table_and_the_default_is_documented():
    ds, t = _cifar_named()
    s = _run("dwa", ds, t, ipc=1, iterations=1, seed=0)
    assert "Diversity-Driven-Synthesis" in s.meta["working_stats"]["source"]
    f = RecoverConfig.__dataclass_fields__["norm"]
    assert f.default == "official" and "recover_cifar.py:22-23@8d00cba" in str(f.metadata)
