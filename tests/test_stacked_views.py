"""Several students' batches augmented as one: `merge_batches` + `Views.apply` on the merged batch give each
student exactly the views (and mixed targets) of its own batch, and a stacked step asks the teacher once."""
from __future__ import annotations

import pytest
import torch

from ddkit.augment import CutMix, Mixup, OneOf, Flip, dsa
from ddkit.augment.ahead import merge_batches
from ddkit.evaluate import EvalConfig, make_criterion, make_plan, resolve_recipe
from ddkit.evaluate.losses import LOSSES
from ddkit.evaluate.stacked import StackedTrainer
from ddkit.evaluate.student import Targets, Views
from ddkit.models import create_model
from ddkit.utils import derive_seed, make_generator

pytestmark = pytest.mark.usefixtures("one_thread")
S, B, K = 3, 6, 4


def _recipe(name: str):
    return resolve_recipe(EvalConfig(recipe=name, regime="hl", epochs=5), n_images=24, num_classes=K, ipc=6,
                          image_size=16)


@pytest.mark.parametrize("recipe", ["dc", "cim", "rded", "sre2l", "sre2l-cifar", "hardtruths-slkd"])
def test_merged_batch_is_each_students_own_batch(recipe):
    """DSA single (OneOf over six ops) / chain (OneOf of the geometry), FactorCrop, ShufflePatches + RRC, CutMix,
    pad-crop + Mixup: every student's block of the merged views and mixed targets equals its own, bit for bit."""
    views = Views(_recipe(recipe), 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x = torch.rand(S, B, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    y = torch.nn.functional.one_hot(torch.randint(0, K, (S, B), generator=torch.Generator().manual_seed(1)), K)
    gens = [make_generator(s, "aug") for s in range(S)]
    for _ in range(4):  # several steps, so OneOf's per-student choices differ on some of them
        draws = [views.draw(B, (B, 3, 16, 16), g) for g in gens]
        own = [views.apply(x[s], draws[s]) for s in range(S)]
        view, cell, mp = views.apply(x.reshape(S * B, 3, 16, 16), merge_batches(draws, B))
        for s in range(S):
            rows = slice(s * B, (s + 1) * B)
            assert torch.equal(view[rows], own[s][0]), f"student {s}"
            if cell is not None:
                assert torch.equal(cell[rows], own[s][1])
            if mp is not None:
                mixed = views.mixer.mix_targets(y.reshape(S * B, K).float(), mp)
                assert torch.equal(mixed[rows], views.mixer.mix_targets(y[s].float(), own[s][2]))


def test_one_of_picks_per_sample_and_mixing_stays_in_its_block():
    op = OneOf([Flip(p=1.0), dsa("color")])
    x = torch.rand(4, 3, 5, 5)
    p = op.sample(4, x.shape, generator=torch.Generator().manual_seed(0))
    p["which"] = torch.tensor([0, 1, 1, 0])
    out = op.apply(x, p)
    assert torch.equal(out[[0, 3]], x[[0, 3]].flip(-1))
    assert torch.equal(out[1:3], op.ops[1].apply(x[1:3], {k[2:]: v[1:3] for k, v in p.items() if k[:2] == "1."}))
    with pytest.raises(ValueError, match="choice"):
        op.apply(x, {**p, "which": torch.tensor([0, 1])})
    for mixer in (CutMix(1.0), Mixup(0.8)):
        draws = [mixer.sample(B, (B, 3, 8, 8), generator=torch.Generator().manual_seed(s)) for s in range(S)]
        m = merge_batches(draws, B)
        assert sorted(m["perm"].tolist()) == list(range(S * B))
        assert all(s * B <= int(v) < (s + 1) * B for s in range(S) for v in m["perm"][s * B:(s + 1) * B])
        assert m["lam"].shape == (S * B,)


def test_stacked_step_asks_the_teacher_once_and_copies_once_per_draw_ahead():
    """SL+KD: one teacher forward over the S·B views per step (not one per student); the batch indices and view
    params of `draw_ahead` steps reach the device in one copy."""
    rec = resolve_recipe(EvalConfig(recipe="cim", regime="slkd", epochs=20), n_images=12, num_classes=K, ipc=3,
                         image_size=8)
    plan = make_plan(rec, 12)
    spec = LOSSES.get(rec.loss_for("slkd"))
    torch.manual_seed(0)
    tnet = create_model("convnet-d1", num_classes=K, image_size=8, width=8).eval()
    seen = []

    def teacher(v: torch.Tensor) -> torch.Tensor:
        seen.append(v.shape[0])
        with torch.no_grad():
            return tnet(v)

    targets = Targets("slkd", K, spec, rec.temperature, teacher_fn=teacher)
    views = Views(rec, 8, (0.5,) * 3, (0.25,) * 3)

    def student(s: int):
        torch.manual_seed(derive_seed(s, "init"))
        return create_model("convnet-d1", num_classes=K, image_size=8, width=8)

    images, labels = torch.rand(12, 3, 8, 8), torch.arange(12) % K
    st = StackedTrainer([student(s) for s in range(S)], list(range(S)), images, labels, rec, plan, views, targets,
                        make_criterion(spec.name, temperature=rec.temperature), device=torch.device("cpu"),
                        draw_ahead=4)
    for _ in range(5):
        st.step()
    assert seen == [S * plan.batch_size] * 5
    assert st.ahead.copies == 2  # steps 1-4 from the first refill, step 5 from the second
