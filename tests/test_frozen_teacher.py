"""One frozen-teacher object (issue #11): `FrozenTeacher` is the only place a teacher's network is frozen,
normalised and chunked, and every caller gets the same numbers the hand-written copies gave.

The references below are the expressions the callers held before (evaluator's online teacher, the
soft-label store, DCS's feature loss, predict_logits), written out once more so a drift in the shared
object fails here bit for bit.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import torch
import torch.nn.functional as F

from ddkit.augment import Compose, Flip, RandomResizedCrop
from ddkit.models import create_model, feature_extractor
from ddkit.teachers import Teacher, predict_logits
from ddkit.teachers.frozen import FrozenTeacher, teacher_identity

ROOT = Path(__file__).resolve().parents[1] / "src" / "ddkit"
MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def _teacher(path: str = "") -> Teacher:
    torch.manual_seed(0)
    net = create_model("convnet-d2", 4, 16, channels=3, width=8)
    return Teacher(net, "convnet-d2", list("abcd"), MEAN, STD, 16, channels=3, meta={"path": path} if path else {},
                   arch_kw={"width": 8})


def _images(n: int = 10, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def _norm(x: torch.Tensor, mean, std) -> torch.Tensor:
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def test_no_private_copy_on_the_same_device_unless_asked():
    t = _teacher()
    cpu = torch.device("cpu")
    assert FrozenTeacher(t, cpu).net is t.model
    own = FrozenTeacher(t, cpu, private=True).net
    assert own is not t.model and not any(p.requires_grad for p in own.parameters())
    with torch.no_grad():
        next(own.parameters()).add_(1.0)  # SRe2L/DWA perturb their copy: the caller's teacher must not move
    assert not torch.equal(next(own.parameters()), next(t.model.parameters()))


def test_online_teacher_of_the_evaluator_matches_the_former_expression():
    from ddkit.evaluate.student import teacher_forward

    t, x = _teacher(), _images()
    set_mean, set_std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    views = _norm(x, set_mean, set_std)
    fn = teacher_forward(t, set_mean, set_std, 16, torch.device("cpu"), amp=True)
    with torch.no_grad():  # former: back to pixels, the teacher's own stats, eval-mode net
        ref = t.model.eval()(t.normalize(views * torch.tensor(set_std).view(1, -1, 1, 1)
                                         + torch.tensor(set_mean).view(1, -1, 1, 1))).float()
    assert torch.equal(fn(views), ref)
    same = teacher_forward(t, MEAN, STD, 16, torch.device("cpu"), amp=True)  # same stats: no round trip
    small = F.interpolate(_norm(x, MEAN, STD), size=(8, 8), mode="bilinear", align_corners=False)
    with torch.no_grad():
        ref = t.model(F.interpolate(small, size=(16, 16), mode="bilinear", align_corners=False)).float()
    assert torch.equal(same(small), ref)  # resized to the teacher's size


def test_label_store_and_predict_logits_match_the_former_copies(tmp_path):
    from ddkit.labels import build_label_store

    t, x = _teacher(), _images(12)
    aug = Compose([RandomResizedCrop(16), Flip()])
    store = build_label_store(x, t, aug, epochs=1, seed=3, path=tmp_path / "store", batch_size=5, device="cpu",
                              progress=False)
    net = copy.deepcopy(t.model).eval().requires_grad_(False)
    with torch.no_grad():
        ref = torch.cat([net(_norm(aug.apply(x[a:a + 5], store.params(0, torch.arange(a, min(a + 5, 12))))
                                   , MEAN, STD)).float() for a in range(0, 12, 5)])
    assert torch.equal(store.logits(0, torch.arange(12)), ref.half().float())
    with torch.no_grad():
        direct = torch.cat([t.model(_norm(x[a:a + 4], MEAN, STD)).float() for a in range(0, 12, 4)])
    assert torch.equal(predict_logits(t, x, batch_size=4), direct)
    assert predict_logits(t, x[:0]).shape[0] == 0


def test_dcs_feature_loss_matches_the_former_embedding():
    from ddkit.dcs import _class_means, feature_mean_loss
    from ddkit.distilled import DistilledSet
    from tests.conftest import make_toy

    train = make_toy(n_per_class=12, num_classes=4, size=16, channels=3)
    t = _teacher()
    pick = torch.tensor([0, 1, 12, 13, 24, 25, 36, 37])
    sub = DistilledSet(to_float_images(train.images[pick]), train.labels[pick], classes=train.classes,
                       mean=train.mean, std=train.std)
    loss = feature_mean_loss(t, real_per_class=4, seed=0)
    got = loss(sub, train, torch.device("cpu"))
    from ddkit.dcs import _real_reference

    ext = feature_extractor(t.model, "penultimate").eval()
    xr, yr = _real_reference(train, 4, 0)
    with torch.no_grad():
        emb = lambda im: ext(_norm(to_float_images(im), MEAN, STD)).float().flatten(1)  # noqa: E731
        ref = float((_class_means(emb(xr), yr, 4) - _class_means(emb(sub.images), sub.labels, 4)).pow(2).sum())
    assert got == ref


def to_float_images(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def test_one_identity_and_no_hand_written_frozen_copies():
    assert teacher_identity(_teacher("/ckpt/t.pt")) == "/ckpt/t.pt"
    assert teacher_identity(_teacher()) == "convnet-d2" and teacher_identity(None) is None
    for path in ROOT.rglob("*.py"):
        if path.name == "frozen.py":
            continue
        text = path.read_text()
        rel = path.relative_to(ROOT)
        assert "deepcopy(teacher.model)" not in text, rel
        assert not re.search(r"meta\.get\(\"path\"\) or teacher\.arch", text), rel
