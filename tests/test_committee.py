"""A set of teachers as one object: documented cycling orders, committee soft labels, committee relabel."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from ddkit.cli import main
from ddkit.distilled import DistilledSet
from ddkit.evaluate.stored import RelabelConfig, relabel
from ddkit.labels import LabelStore
from ddkit.models import create_model
from ddkit.teachers import Teacher, save_teacher
from ddkit.teachers.committee import (Committee, CommitteeConfig, FrozenCommittee, load_committee,
                                      read_teacher_list, softmax_weights)
from ddkit.utils import DDKitError

K, S = 4, 8
CLASSES = [f"c{i}" for i in range(K)]


class Linear(nn.Module):
    """A tiny teacher whose logits are a fixed linear map of the mean colour (hand-checkable)."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) @ self.w


def _teacher(seed: int, name: str = "lin") -> Teacher:
    w = torch.randn(3, K, generator=torch.Generator().manual_seed(seed)) * (seed + 1)
    return Teacher(Linear(w), name, CLASSES, (0.5,) * 3, (0.25,) * 3, S)


def _images(n: int = 6) -> torch.Tensor:
    return torch.rand(n, 3, S, S, generator=torch.Generator().manual_seed(1))


def test_round_robin_cycles_in_the_given_order():
    ts = [_teacher(i, f"t{i}") for i in range(3)]
    c = Committee(ts)
    got = [c.at(t).arch for t in range(8)]
    assert got == ["t0", "t1", "t2", "t0", "t1", "t2", "t0", "t1"]  # step mod K (G-VBSM/EDC/FADRM+)
    assert c.at(7) is ts[1] and c.index(300) == 0


def test_cv_dd_pairs_follow_the_official_ipc10_list():
    names = ["ResNet18", "ResNet50", "ShuffleNetV2", "MobileNetV2", "Densenet121"]
    priors = [56.4, 42.3, 52.5, 44.2, 40.6]
    c = Committee([_teacher(i, n) for i, n in enumerate(names)], priors=priors)
    official = [["ResNet18", "ResNet50"], ["ResNet18", "ShuffleNetV2"], ["ResNet18", "MobileNetV2"],
                ["ResNet18", "Densenet121"], ["ResNet50", "ShuffleNetV2"], ["ResNet50", "MobileNetV2"],
                ["ResNet50", "Densenet121"], ["ShuffleNetV2", "MobileNetV2"], ["ShuffleNetV2", "Densenet121"],
                ["MobileNetV2", "Densenet121"]]  # CV-DD recover.py:319-329 (--model-setting 5)
    for i, pair in enumerate(official):
        voters = c.voters(i)
        assert [t.arch for t, _ in voters] == pair
        a, b = (priors[names.index(n)] for n in pair)
        ea, eb = np.exp(a / 5), np.exp(b / 5)  # softmax(prior / 5) over the pair, by hand
        assert voters[0][1] == pytest.approx(ea / (ea + eb)) and voters[1][1] == pytest.approx(eb / (ea + eb))
    assert [t.arch for t, _ in c.voters(10)] == official[0]  # cycles past the list


def test_mean_vote_is_the_hand_average():
    ts = [_teacher(i) for i in range(3)]
    x = _images()
    with torch.no_grad():
        hand = sum(t.model(t.normalize(x)) for t in ts) / 3
    assert torch.allclose(Committee(ts).logits(x), hand, atol=1e-6)


def test_weighted_vote_is_the_prior_softmax_sum():
    ts = [_teacher(i) for i in range(3)]
    priors = [56.4, 42.3, 52.5]
    x = _images()
    e = [np.exp(p / 10) for p in priors]
    w = [v / sum(e) for v in e]  # CV-DD relabel.py:303: softmax(prior / 10)
    with torch.no_grad():
        hand = sum(wk * t.model(t.normalize(x)) for wk, t in zip(w, ts))
    got = Committee(ts, vote="weighted", priors=priors).logits(x)
    assert torch.allclose(got, hand.float(), atol=1e-5)
    assert softmax_weights(priors, 10).sum().item() == pytest.approx(1.0)


def test_norm_mean_vote_rescales_each_member_to_the_mean_frobenius_norm():
    ts = [_teacher(i) for i in range(2)]
    x = _images()
    with torch.no_grad():
        z = [t.model(t.normalize(x)) for t in ts]
    n = [float(torch.sqrt((v ** 2).sum())) for v in z]
    m = sum(n) / 2
    hand = (z[0] / n[0] * m + z[1] / n[1] * m) / 2
    got = Committee(ts, vote="norm_mean").logits(x)
    assert torch.allclose(got, hand, atol=1e-5)
    assert not torch.allclose(got, Committee(ts).logits(x), atol=1e-3)  # it differs from the plain mean


class BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(x).mean(dim=(2, 3)))


def test_batch_stats_labels_each_half_with_its_own_statistics():
    torch.manual_seed(0)
    nets = [BNNet() for _ in range(2)]
    ts = [Teacher(n, "bn", CLASSES, (0.5,) * 3, (0.25,) * 3, S) for n in nets]
    x = _images(8)
    fc = FrozenCommittee(Committee(ts, batch_stats=True), torch.device("cpu"), max_batch=8)
    got = fc.logits(x)
    hand = []
    for t in ts:
        ref = BNNet()
        ref.load_state_dict(t.model.state_dict())
        ref.train()
        with torch.no_grad():
            hand.append(torch.cat([ref(t.normalize(x[:4])), ref(t.normalize(x[4:]))]))
    assert torch.allclose(got, (hand[0] + hand[1]) / 2, atol=1e-5)
    assert not nets[0].training and not nets[0].bn.training  # the caller's teachers are untouched
    assert not torch.allclose(got, Committee(ts).logits(x), atol=1e-3)  # eval-mode BN differs


def test_committee_refuses_mismatches():
    a = _teacher(0)
    b = Teacher(Linear(torch.zeros(3, K)), "lin", ["x"] + CLASSES[1:], (0.5,) * 3, (0.25,) * 3, S)
    with pytest.raises(DDKitError, match="classes"):
        Committee([a, b])
    with pytest.raises(DDKitError, match="prior"):
        Committee([a, _teacher(1)], vote="weighted")
    with pytest.raises(DDKitError, match="unknown vote"):
        Committee([a], vote="median")


def test_teacher_list_file(tmp_path):
    for i in range(2):
        save_teacher(_conv_teacher(i), tmp_path / f"t{i}")
    lst = tmp_path / "teachers.txt"
    lst.write_text("# committee\nt0 56.4\n\nt1 42.3  # second\n")
    paths, priors = read_teacher_list(lst)
    assert paths == [str(tmp_path / "t0"), str(tmp_path / "t1")] and priors == [56.4, 42.3]
    c = load_committee(paths, CommitteeConfig(vote="weighted"), priors=priors)
    assert len(c) == 2 and c.priors == (56.4, 42.3)
    lst.write_text("t0 56.4\nt1\n")
    with pytest.raises(DDKitError, match="every line"):
        read_teacher_list(lst)


def _conv_teacher(seed: int) -> Teacher:
    torch.manual_seed(seed)
    return Teacher(create_model("convnet-d1", K, S, width=4), "convnet-d1", CLASSES, (0.5,) * 3, (0.25,) * 3, S,
                   arch_kw={"width": 4})


def _set(tmp_path):
    images = torch.rand(12, 3, S, S, generator=torch.Generator().manual_seed(0))
    root = tmp_path / "set"
    DistilledSet(images, torch.arange(K).repeat_interleave(3), CLASSES, (0.5,) * 3, (0.25,) * 3,
                 meta={"method": "toy"}).save(root, pngs=False)
    return root, images


def test_relabel_with_a_committee_stores_the_committee_logits(tmp_path):
    root, images = _set(tmp_path)
    ts = [_conv_teacher(i) for i in range(2)]
    store = relabel(root, Committee(ts), RelabelConfig(recipe="sre2l", epochs=2, seed=3, batch_size=5),
                    device="cpu", progress=False)
    st = LabelStore.open(store.path, images=images, aug=store.aug)
    x, z = st.views(1, torch.arange(12))
    with torch.no_grad():
        hand = sum(t.model(t.normalize(x)) for t in ts) / 2
    assert torch.allclose(z, hand, atol=2e-2)  # fp16 storage
    assert store.meta["teacher_arch"].startswith("committee[mean](")


def test_relabel_cli_takes_repeated_teachers(tmp_path):
    root, images = _set(tmp_path)
    for i in range(2):
        save_teacher(_conv_teacher(i), tmp_path / f"t{i}")
    args = ["relabel", str(root), "--teacher", str(tmp_path / "t0"), "--teacher", str(tmp_path / "t1"),
            "--vote", "weighted", "--teacher-prior", "60,40", "--epochs", "1", "--no-progress", "--device", "cpu"]
    assert main(args) == 0
    meta = json.loads((root / "fkd" / "meta.json").read_text())
    assert meta["teacher_arch"] == "committee[weighted,T=10,prior=60/40](convnet-d1,convnet-d1)"
    # a batch-dependent rule records its batch size, and resume refuses another one
    assert main(args[:-9] + ["--vote", "norm_mean", "--epochs", "1", "--batch-size", "4", "--overwrite",
                             "--no-progress", "--device", "cpu"]) == 0
    meta = json.loads((root / "fkd" / "meta.json").read_text())
    assert meta["label_batch"] == 4


def test_batch_dependent_store_labels_random_batches_of_the_recorded_size(tmp_path):
    root, images = _set(tmp_path)
    ts = [_conv_teacher(i) for i in range(2)]
    c = Committee(ts, vote="norm_mean")
    store = relabel(root, c, RelabelConfig(recipe="sre2l", epochs=1, seed=3, batch_size=4), device="cpu",
                    progress=False)
    st = LabelStore.open(store.path, images=images, aug=store.aug)
    from ddkit.utils import make_generator
    order = torch.randperm(12, generator=make_generator(3, "label-batches", 0))
    for a in range(0, 12, 4):  # each seeded batch of 4 is normalised together
        idx = order[a:a + 4]
        x, z = st.views(0, idx)
        assert torch.allclose(z, c.logits(x), atol=2e-2)
    assert store.meta["label_batch"] == 4
