"""CV-DD: the committee per IPC index in its documented order, prior voter weights, the weighted multi-teacher
loss by hand, the median-confidence init, a committee through the CLI and the driver."""
from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ddkit.cli import main
from ddkit.methods import create_method
from ddkit.methods.cvdd import PRIORS, committee_of, voter_weights
from ddkit.methods.real_init import medium_order
from ddkit.models import create_model
from ddkit.teachers import Teacher, save_teacher
from ddkit.teachers.committee import Committee
from ddkit.utils import DDKitError, make_generator
from tests.conftest import bn_loss_by_hand, make_toy

pytestmark = pytest.mark.usefixtures("one_thread")


def _net(seed: int, k: int = 4, size: int = 8, **kw) -> nn.Module:
    torch.manual_seed(seed)
    net = create_model("convnet-d1-bn", num_classes=k, image_size=size, **{"width": 8, **kw})
    net.train()
    with torch.no_grad():  # non-trivial running statistics, a confident classifier
        for _ in range(5):
            net(torch.randn(32, 3, size, size) * (1 + seed))
        net.classifier.weight.mul_(10.0)
    return net.eval().requires_grad_(False)


def _committee(ds, n: int = 2, priors=None) -> Committee:
    ts = [Teacher(_net(i), f"convnet-d1-bn", ds.classes, ds.mean, ds.std, 8) for i in range(n)]
    return Committee(ts, priors=priors)


def _run(ds, teacher, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return create_method("cvdd", **kw)(ds, teacher, device="cpu", progress=False)


def test_committee_order_is_the_official_ipc10_list_and_weights_are_softmax_prior_over_5():
    names = ["ResNet18", "ResNet50", "ShuffleNetV2", "MobileNetV2", "Densenet121"]
    official = [["ResNet18", "ResNet50"], ["ResNet18", "ShuffleNetV2"], ["ResNet18", "MobileNetV2"],
                ["ResNet18", "Densenet121"], ["ResNet50", "ShuffleNetV2"], ["ResNet50", "MobileNetV2"],
                ["ResNet50", "Densenet121"], ["ShuffleNetV2", "MobileNetV2"], ["ShuffleNetV2", "Densenet121"],
                ["MobileNetV2", "Densenet121"]]  # CV-DD recover.py:319-329 (--model-setting 5)
    assert [[names[j] for j in committee_of(i, None, 5, "pairs")] for i in range(10)] == official
    assert committee_of(10, None, 5, "pairs") == [0, 1]  # past the official list: cycles
    prior = [PRIORS["cifar10"][n] for n in names]
    # setting 4 (IPC 1): the two highest priors, CIFAR-10's are ShuffleNetV2 68.5 and MobileNetV2 67.6
    assert committee_of(0, prior, 5, "best") == [2, 3]
    w = voter_weights([0, 1], prior, "prior", 5.0)  # ResNet18 63, ResNet50 65.3 at T = 5 (utils_recover.py:297-303)
    e0, e1 = math.exp(63 / 5), math.exp(65.3 / 5)
    assert w == pytest.approx([e0 / (e0 + e1), e1 / (e0 + e1)], rel=1e-9) and w[1] > w[0]
    assert voter_weights([0, 1], prior, "equal", 5.0) == [0.5, 0.5]
    r = [committee_of(i, prior, 5, "random", make_generator(0, "x", i)) for i in range(20)]
    assert all(len(set(p)) == 2 for p in r) and len({tuple(p) for p in r}) > 1
    with pytest.raises(DDKitError):
        committee_of(0, None, 5, "best")


def test_medium_order_is_delts_alternation_around_the_median():
    scores = torch.tensor([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.6])  # ascending ranks: 1,5,3,2,7,4,6,0
    ranked = [1, 5, 3, 2, 7, 4, 6, 0]
    mid = 4  # ceil(8 / 2): then +1, -1, +2, -2 (data_selection.py:247-262)
    want = [ranked[mid], ranked[mid + 1], ranked[mid - 1], ranked[mid + 2], ranked[mid - 2]]
    assert medium_order(scores, 5).tolist() == want
    with pytest.raises(DDKitError):
        medium_order(scores, 9)


def test_weighted_committee_loss_equals_a_hand_computation():
    """Iteration 0 of IPC index 0: the loss is Σ_k w_k (CE_k + r_bn·BN_k) over the pair, each member's BN term
    against its own running statistics, the batch one noise image per class (init noise, no augmentation)."""
    ds = make_toy(n_per_class=12, num_classes=4, size=8)
    com = _committee(ds, 3, priors=[60.0, 64.0, 50.0])
    s = _run(ds, com, ipc=2, iterations=1, jitter=0, rrc=False, flip=False, init="noise", seed=2)
    for index in range(2):
        g = make_generator(2, "cvdd", "ipc", index, "group", 0)
        x0 = torch.randn(4, 3, 8, 8, generator=g)
        pair = committee_of(index, None, 3, "pairs")
        e = [math.exp(p / 5) for p in (60.0, 64.0, 50.0)]
        w = [e[j] / sum(e[i] for i in pair) for j in pair]
        ce_hand = bn_hand = 0.0
        for j, wj in zip(pair, w):
            logits, bn = bn_loss_by_hand(com.members[j].model, x0)
            ce_hand += wj * float(F.cross_entropy(logits, torch.arange(4)))
            bn_hand += wj * bn
        got = s.meta["unit_meta"][index]
        assert got["voter_index"] == pair and got["voter_weights"] == pytest.approx(w, rel=1e-5)
        assert got["ce_first"] == pytest.approx(ce_hand, rel=1e-5)
        assert got["bn_first"] == pytest.approx(bn_hand, rel=1e-5)
    assert s.meta["recover"]["prior_source"] == "teacher list" and s.native == "cvdd"


def test_teachers_of_other_normalisations_each_see_the_working_space_through_their_own_map():
    """CV-DD optimises in the dataset's own statistics (norm true, recover.py:254-268); a member trained with
    other statistics sees each image as its own normalisation would give it: (p − m_t)/s_t."""
    ds = make_toy(n_per_class=12, num_classes=4, size=8)
    other = ((0.2, 0.3, 0.4), (0.5, 0.6, 0.7))
    ts = [Teacher(_net(0), "convnet-d1-bn", ds.classes, ds.mean, ds.std, 8),
          Teacher(_net(1), "convnet-d1-bn", ds.classes, other[0], other[1], 8)]
    s = _run(ds, Committee(ts), ipc=1, iterations=1, jitter=0, rrc=False, flip=False, init="noise", seed=3)
    g = make_generator(3, "cvdd", "ipc", 0, "group", 0)
    x0 = torch.randn(4, 3, 8, 8, generator=g)  # the working space = the dataset's own statistics
    m_w, s_w = torch.tensor(ds.mean).view(1, 3, 1, 1), torch.tensor(ds.std).view(1, 3, 1, 1)
    pix = x0 * s_w + m_w
    ce = 0.0
    for t in ts:
        inp = (pix - torch.tensor(t.mean).view(1, 3, 1, 1)) / torch.tensor(t.std).view(1, 3, 1, 1)
        with torch.no_grad():
            ce += 0.5 * float(F.cross_entropy(t.model(inp), torch.arange(4)))
    got = s.meta["unit_meta"][0]
    assert got["ce_first"] == pytest.approx(ce, rel=1e-4)
    assert s.meta["working_stats"]["norm"] == "true" and s.meta["working_stats"]["teacher_map"] is False


def test_a_short_recover_lowers_the_committee_loss_from_medium_real_images():
    ds = make_toy(n_per_class=12, num_classes=4, size=8)
    com = _committee(ds, 2)
    s = _run(ds, com, ipc=2, iterations=40, lr=0.1, jitter=1, preset="cifar", rrc=False, flip=False, seed=0)
    for u in s.meta["unit_meta"]:
        curve = u["loss_curve"]
        assert curve[-1] < 0.8 * curve[0]
        assert u["voter_weights"] == [0.5, 0.5]  # no priors known for these toy teachers: equal weights
    assert s.meta["init"] == "medium" and len(s.meta["source_indices"]) == 8
    assert s.images.shape == (8, 3, 8, 8) and float(s.images.min()) >= 0 and float(s.images.max()) <= 1


def test_one_teacher_is_model_setting_0_and_other_methods_refuse_a_committee():
    ds = make_toy(n_per_class=12, num_classes=4, size=8)
    com = _committee(ds, 2)
    one = _run(ds, com.members[0], ipc=1, iterations=2, seed=0)
    assert one.meta["unit_meta"][0]["voter_weights"] == [1.0]
    assert one.meta["recover"]["model_setting"].startswith("0")
    with pytest.raises(DDKitError, match="not a committee"):
        create_method("sre2l", ipc=1, iterations=1)(ds, com, device="cpu", progress=False)


def _folder(root, ds):
    from PIL import Image

    for split in ("train", "test"):
        for c in range(ds.num_classes):
            d = root / split / f"c{c}"
            d.mkdir(parents=True)
            for i, img in enumerate(ds.images[ds.labels == c]):
                Image.fromarray(img.permute(1, 2, 0).numpy()).save(d / f"{i}.png")
    return root


def test_cli_distills_through_a_committee_of_two_teachers(tmp_path, capsys):
    ds = make_toy(n_per_class=12, num_classes=4, size=8)
    root = _folder(tmp_path / "folder", ds)
    classes = [f"c{c}" for c in range(4)]
    paths = []
    for i in range(2):
        save_teacher(Teacher(_net(i, width=128), "convnet-d1-bn", classes, ds.mean, ds.std, 8), tmp_path / f"t{i}")
        paths += ["--teacher", str(tmp_path / f"t{i}")]
    data = ["--dataset", f"folder:{root}", "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--no-progress",
            "--skip-teacher-check"]
    out = tmp_path / "set"
    rc = main(["distill", *data, "--method", "cvdd", "--ipc", "2", "--iterations", "3", "--select-pool", "6",
               "--voter-prior", "60,64", *paths, "--output", str(out)])
    assert rc == 0, capsys.readouterr().err
    meta = json.loads((out / "meta.json").read_text())
    assert meta["method"] == "cvdd" and meta["native"] == "cvdd" and meta["teacher_arch"].startswith("committee")
    assert meta["recover"]["priors"] == [60.0, 64.0] and meta["unit_meta"][0]["voter_index"] == [0, 1]
    capsys.readouterr()
    rc = main(["distill", *data, "--method", "sre2l", "--ipc", "1", *paths, "--output", str(tmp_path / "no")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "not a committee" in err and err.count("\n") == 0
