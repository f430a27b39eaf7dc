"""`ddkit study continual` (issue #29): the seeded class split, the per-step subsets, fine-tuning, end to end."""
from __future__ import annotations

import pytest
import torch

from tests.conftest import MeanOracle, make_toy
from ddkit.cli import main
from ddkit.evaluate import EvalConfig, evaluate
from ddkit.methods import create_method
from ddkit.models import create_model
from ddkit.study_continual import (class_steps, grow_into, run_continual, set_for_classes, teacher_for_classes,
                                   split_for_classes)
from ddkit.teachers import Teacher
from ddkit.utils import DDKitError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("k,steps", [(10, 5), (10, 3), (7, 7), (100, 5), (5, 1)])
def test_class_steps_cover_every_class_exactly_once_in_near_equal_groups(k, steps):
    groups = class_steps(k, steps, seed=0)
    assert len(groups) == steps
    flat = [c for g in groups for c in g]
    assert sorted(flat) == list(range(k))  # every class, once
    assert max(map(len, groups)) - min(map(len, groups)) <= 1


def test_class_steps_are_seeded():
    assert class_steps(10, 5, seed=3) == class_steps(10, 5, seed=3)
    assert class_steps(10, 5, seed=3) != class_steps(10, 5, seed=4)
    assert [c for g in class_steps(10, 5, 0) for c in g] != list(range(10))  # shuffled, not the label order
    with pytest.raises(DDKitError):
        class_steps(4, 5)


def test_step_subsets_relabel_the_set_the_test_split_and_the_teacher_consistently():
    train, test = make_toy(6, 4, 8), make_toy(5, 4, 8, seed=1, split="test")
    s = create_method("random", ipc=2, seed=0)(train, progress=False)
    s.soft["soft"] = torch.arange(8 * 4, dtype=torch.float).view(8, 4)
    sub = set_for_classes(s, [3, 1])
    assert sub.classes == ["class3", "class1"] and len(sub) == 4
    assert sorted(sub.labels.tolist()) == [0, 0, 1, 1]
    assert torch.equal(sub.soft["soft"][sub.labels == 0][:, 0], s.soft["soft"][s.labels == 3][:, 3])
    tsub = split_for_classes(test, [3, 1])
    assert tsub.classes == sub.classes and len(tsub) == 10
    assert torch.equal(tsub.images[tsub.labels == 0], test.images[test.labels == 3])
    t = Teacher(MeanOracle(), "oracle", train.classes, train.mean, train.std, image_size=8)
    tt = teacher_for_classes(t, [3, 1])
    x = torch.rand(2, 3, 8, 8)
    assert tt.classes == ["class3", "class1"] and torch.equal(tt(x), t(x)[:, [3, 1]])


def test_grow_into_keeps_the_old_weights_and_head_rows():
    old = create_model("convnet-d1", num_classes=2, image_size=8)
    new = create_model("convnet-d1", num_classes=4, image_size=8)
    fresh = {k: v.clone() for k, v in new.state_dict().items()}
    grow_into(new, old.state_dict())
    for k, v in new.state_dict().items():
        o = old.state_dict()[k]
        if v.shape == o.shape:
            assert torch.equal(v, o)
        else:  # the head: old rows copied, the new classes' rows left as initialised
            assert torch.equal(v[:2], o) and torch.equal(v[2:], fresh[k][2:])


def test_evaluate_init_student_hook_sets_the_starting_weights(toy_eval):
    train, test, dset, _ = toy_eval
    calls = []

    def zero(seed, model):
        calls.append(seed)
        for p in model.parameters():
            torch.nn.init.zeros_(p)

    cfg = EvalConfig(recipe="hardtruths-hl", regime="hl", seeds=2, epochs=1, student="mlp")
    plain = evaluate(dset, test, cfg, progress=False)
    zeroed = evaluate(dset, test, cfg, progress=False, init_student=zero)
    assert calls == [0, 1]
    # an all-zero MLP starts from uniform logits: its run differs from the seeded init's
    assert [r.final_loss for r in plain.runs] != [r.final_loss for r in zeroed.runs]


def test_continual_scratch_and_finetune_and_refusals(tmp_path):
    train, test = make_toy(12, 4, 8), make_toy(6, 4, 8, seed=1, split="test")
    torch.manual_seed(0)  # herding needs teacher features: a (fresh) ConvNet teacher
    t = Teacher(create_model("convnet-d1", 4, 8), "convnet-d1", train.classes, train.mean, train.std, 8)
    kw = dict(methods=("herding",), steps=2, ipc=2, epochs=3, seeds=2, recipe="hardtruths-hl", regime="hl",
              student="convnet-d1", progress=False, device="cpu")
    rows = run_continual(train, test, t, output_dir=str(tmp_path / "s"), **kw)
    assert {(r["method"], r["step"], r["classes_seen"]) for r in rows} == {
        (m, k, 2 * k) for m in ("herding", "random") for k in (1, 2)}
    seen = class_steps(4, 2, 0)
    assert rows[0]["classes"] == ";".join(train.classes[c] for c in seen[0])
    ft = run_continual(train, test, t, output_dir=str(tmp_path / "f"), mode="finetune", **kw)
    assert (tmp_path / "f" / "runs" / "herding-step1" / "student-seed1.safetensors").is_file()
    by = {(r["method"], r["step"]): r for r in rows}
    assert all(r["accs"] == by[(r["method"], 1)]["accs"] for r in ft if r["step"] == 1)  # step 1: the same run
    with pytest.raises(DDKitError, match="jointly"):
        run_continual(train, test, t, output_dir=str(tmp_path / "x"), **{**kw, "methods": ("dc",)})
    with pytest.raises(DDKitError, match="another protocol"):
        run_continual(train, test, t, output_dir=str(tmp_path / "s"), **{**kw, "steps": 4})


def test_cli_continual_end_to_end(tmp_path):
    args = ["study", "continual", "--dataset", "digits", "--device", "cpu", "--no-progress", "--methods", "random",
            "--steps", "5", "--ipc", "1", "--epochs", "1", "--seeds", "1", "--recipe", "hardtruths-hl", "--regime",
            "hl", "--test-per-class", "5", "--output-dir", str(tmp_path / "c")]
    assert main(args) == 0
    text = (tmp_path / "c" / "report.md").read_text()
    assert "step 5 (10 cl.)" in text and (tmp_path / "c" / "curve.png").is_file()
    ran = [x for x in text.splitlines() if "protocol **hard-truths**" in x]  # what the students ran, with its cells
    assert len(ran) == 1 and "recipe `hardtruths-hl`, regime hl" in ran[0] and "random-step5" in ran[0]
