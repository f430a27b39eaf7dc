"""Several students in one pass: stacked training equals the one-at-a-time runs (CPU, tiny ConvNet)."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from ddkit.evaluate import EvalConfig, evaluate, make_criterion, make_plan, resolve_recipe
from ddkit.evaluate.losses import LOSSES
from ddkit.evaluate.stacked import StackedTrainer, stackable
from ddkit.evaluate.student import StudentTrainer, Targets, Views, teacher_forward
from ddkit.methods import create_method
from ddkit.models import create_model
from ddkit.teachers import Teacher
from ddkit.utils import DDKitError, derive_seed, make_generator

K = 4
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(toy_pair):
    train, test = toy_pair
    dset = create_method("random", ipc=3, seed=0)(train, progress=False)
    torch.manual_seed(5)
    tnet = create_model("convnet-d1", num_classes=K, image_size=8, width=8).eval()
    teacher = Teacher(tnet, "convnet-d1", train.classes, train.mean, train.std, image_size=8)
    return train, test, dset, teacher


def test_stackable_refuses_batch_statistics():
    assert stackable(create_model("convnet-d3", num_classes=10))
    assert stackable(create_model("convnet-d2-nn", num_classes=10))
    assert stackable(create_model("mlp", num_classes=10))
    assert not stackable(create_model("convnet-d3-bn", num_classes=10))
    assert not stackable(nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1)))


def _student(seed: int) -> nn.Module:
    torch.manual_seed(derive_seed(seed, "init"))
    return create_model("convnet-d2", num_classes=K, image_size=8, width=8)


@pytest.mark.parametrize("recipe,regime", [("dc", "hl"), ("cim", "slkd"), ("rded", "slkd"), ("sre2l-cifar", "slkd")])
def test_stacked_steps_equal_one_at_a_time(data, recipe, regime):
    """The merged data path (one augmentation call, one teacher forward over all students' views) and the vmapped
    student give each seed its own run's losses, weights and outputs (DSA single / chain, FactorCrop, RDED's
    ShufflePatches + RRC + CutMix, pad-crop + Mixup). KL at T = 20 of a near-untrained pair is ~1e-5, so its
    fp32 rounding (~1e-8) is bounded by atol."""
    _, _, dset, teacher = data
    n = len(dset)
    cfg = EvalConfig(recipe=recipe, regime=regime, epochs=20)
    rec = resolve_recipe(cfg, n_images=n, num_classes=K, ipc=dset.ipc, image_size=8)
    plan = make_plan(rec, n)
    spec = LOSSES.get(rec.loss_for(regime))
    dev = torch.device("cpu")
    fn = teacher_forward(teacher, dset.mean, dset.std, 8, dev, True) if regime == "slkd" else None
    targets = Targets(regime, K, spec, rec.temperature, teacher_fn=fn)
    crit = make_criterion(spec.name, temperature=rec.temperature)
    views = Views(rec, 8, dset.mean, dset.std)
    seeds = [3, 4, 5]
    singles = []
    for s in seeds:
        tr = StudentTrainer(_student(s), dset.images, dset.labels, rec, plan, views, targets, crit, device=dev,
                            order_gen=make_generator(s, "order"), aug_gen=make_generator(s, "aug"))
        singles.append((tr, torch.stack([tr.step() for _ in range(12)])))
    st = StackedTrainer([_student(s) for s in seeds], seeds, dset.images, dset.labels, rec, plan, views, targets,
                        crit, device=dev)
    stacked_losses = torch.stack([st.step() for _ in range(12)])  # 12 × S
    for i, (tr, losses) in enumerate(singles):
        torch.testing.assert_close(stacked_losses[:, i], losses, rtol=1e-4, atol=1e-7)
        mine = dict(st.student(i).named_parameters())
        for name, p in tr.model.named_parameters():
            if name.endswith("0.bias"):
                # A conv bias right before instance norm is cancelled by it: its gradient is rounding noise,
                # which AdamW scales up to lr-sized steps of random sign. It never changes the output
                # (checked below), so the two runs may differ there.
                continue
            torch.testing.assert_close(mine[name], p, rtol=1e-4, atol=1e-5, msg=f"seed {seeds[i]} {name}")
        x = views(dset.images[:6], make_generator(0, "check"))[0]
        torch.testing.assert_close(st.student(i)(x), tr.model(x), rtol=1e-4, atol=1e-5)
    assert st.last_lr == singles[0][0].last_lr


@pytest.mark.parametrize("regime,stack", [("hl", 2), ("hl", 3), ("slkd", 3)])
def test_evaluate_stacked_equals_sequential(data, tmp_path, regime, stack):
    """Seeds 0, 1, 2 stacked (in groups of `stack`) give each seed its unstacked run's results (fp32)."""
    _, test, dset, teacher = data
    base = dict(recipe="cim", regime=regime, student="convnet-d1", student_width=8, seeds=3, epochs=15, num_evals=2)
    one = evaluate(dset, test, EvalConfig(**base), teacher, progress=False)
    out = tmp_path / "stacked"
    three = evaluate(dset, test, EvalConfig(**base, stack=stack), teacher, progress=False, output=out)
    assert three.seeds == one.seeds == [0, 1, 2]
    for a, b in zip(one.runs, three.runs):
        assert abs(a.final_acc - b.final_acc) <= 1.0 / len(test) + 1e-9  # one image may flip on a tie
        assert a.final_loss == pytest.approx(b.final_loss, rel=1e-4, abs=1e-6)
        assert [e for e, _ in a.test_history] == [e for e, _ in b.test_history]
        assert b.class_accs is not None and len(b.class_accs) == K
    lines = [json.loads(x) for x in (out / "seed2" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["epoch"] == one.plan.total_epochs and "test_acc" in lines[-1]


def test_stack_falls_back_for_batchnorm_and_rejects_zero(data):
    _, test, dset, teacher = data
    base = dict(recipe="dc", regime="hl", student="convnet-d1-bn", student_width=8, seeds=2, epochs=3)
    a = evaluate(dset, test, EvalConfig(**base), progress=False)
    b = evaluate(dset, test, EvalConfig(**base, stack=2), progress=False)
    assert a.accs == b.accs and [r.final_loss for r in a.runs] == [r.final_loss for r in b.runs]
    with pytest.raises(DDKitError, match="--stack"):
        evaluate(dset, test, EvalConfig(**base, stack=0), progress=False)
