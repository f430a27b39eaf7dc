"""bench/teacher_agreement.py: on a set of one image repeated under every label, the teacher's single answer agrees
with exactly one label (1/K) and is the most-predicted class for all images (100 %); a real subset agrees as the
teacher's own predictions say."""
from __future__ import annotations

import json

import pytest
import torch

from ddkit.distilled import DistilledSet
from ddkit.teachers import TeacherConfig, load_teacher, predict_logits, save_teacher, train_teacher
from tests.conftest import load_bench_script, make_toy

K = 4
pytestmark = pytest.mark.usefixtures("one_thread")


def test_agreement_and_top_class_share(tmp_path):
    toy = make_toy(n_per_class=6, num_classes=K, size=8, seed=0)
    cfg = TeacherConfig(arch="convnet-d2", arch_kw={"width": 8}, epochs=3, batch_size=8, lr=0.05, seed=0)
    teacher, _ = train_teacher(toy, None, cfg, "cpu", progress=False)
    save_teacher(teacher, tmp_path / "teacher")
    images = toy.images.float() / 255
    sets = tmp_path / "sets"
    one = images[:1].repeat(K, 1, 1, 1)  # one image under every label
    DistilledSet(one, torch.arange(K), toy.classes, toy.mean, toy.std).save(sets / "same", pngs=False)
    idx = torch.arange(0, len(toy), 3)
    DistilledSet(images[idx], toy.labels[idx], toy.classes, toy.mean, toy.std).save(sets / "subset", pngs=False)
    (sets / "not-a-set").mkdir()
    out = tmp_path / "agree.json"
    bench = load_bench_script("teacher_agreement.py")
    assert bench.main(["--teacher", str(tmp_path / "teacher"), "--output", str(out), str(sets)]) == 0
    got = json.loads(out.read_text())
    assert set(got) == {"same", "subset"}
    assert got["same"] == {"agree": 100.0 / K, "top_class_share": 100.0}
    t = load_teacher(tmp_path / "teacher", device="cpu")
    pred = predict_logits(t, images[idx], device=torch.device("cpu")).float().argmax(1)
    assert got["subset"]["agree"] == pytest.approx(100 * (pred == toy.labels[idx]).float().mean().item(), abs=0.05)
    assert got["subset"]["top_class_share"] == pytest.approx(100 * torch.bincount(pred).max().item() / len(idx),
                                                             abs=0.05)
