"""EDC's student EMA (evaluate/ema.py): the average by hand, the swap keeps buffers live, training is untouched,
every test evaluation sees the averaged parameters, and the edc recipes turn it on."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from ddkit.evaluate import EvalConfig, get_recipe
from ddkit.evaluate.ema import ParamEMA
from ddkit.evaluate.losses import LOSSES, make_criterion
from ddkit.evaluate.recipes import resolve_recipe
from ddkit.evaluate.student import StudentTrainer, Targets, Views, make_plan, train_run
from ddkit.models import create_model
from ddkit.utils import DDKitError, derive_seed, make_generator
from tests.conftest import make_toy

pytestmark = pytest.mark.usefixtures("one_thread")
K = 4


def test_average_by_hand_and_the_swap_keeps_buffers_live():
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = ParamEMA(net, 0.9)
    w = [net[0].weight.detach().clone()]
    for k in (1.0, 2.0):
        with torch.no_grad():
            net[0].weight.add_(k)
        w.append(net[0].weight.detach().clone())
        ema.step(net)
    want = 0.81 * w[0] + 0.09 * w[1] + 0.1 * w[2]  # d²·w0 + d(1−d)·w1 + (1−d)·w2
    net[1].running_mean.fill_(3.0)
    with ema.swapped(net) as m:
        assert torch.allclose(m[0].weight, want, atol=1e-6)
        assert torch.equal(m[1].running_mean, torch.full((2,), 3.0))  # buffers are the live model's
    assert torch.equal(net[0].weight, w[2])  # restored
    with pytest.raises(ValueError):
        ParamEMA(net, 1.0)


def _trainer(decay: float):
    ds = make_toy(n_per_class=5, num_classes=K, size=8)
    cfg = EvalConfig(recipe="edc", regime="hl", epochs=6, ema_decay=decay)
    rec = resolve_recipe(cfg, n_images=len(ds), num_classes=K, ipc=5, image_size=8)
    spec = LOSSES.get(rec.loss_for("hl"))
    torch.manual_seed(derive_seed(0, "init"))
    net = create_model("convnet-d1", num_classes=K, image_size=8, width=8)
    tr = StudentTrainer(net, ds.images, ds.labels, rec, make_plan(rec, len(ds)), Views(rec, 8, ds.mean, ds.std),
                        Targets("hl", K, spec, rec.temperature), make_criterion(spec.name), device=torch.device("cpu"),
                        order_gen=make_generator(0, "order"), aug_gen=make_generator(0, "aug"))
    return tr


def test_training_is_untouched_and_tests_see_the_average():
    seen = {}

    def probe(name):
        def evaluate(model):
            seen[name] = [p.detach().clone() for p in model.parameters()]
            return 0.5
        return evaluate

    plain, averaged = _trainer(0.0), _trainer(0.99)
    a = train_run(plain, 0, evaluate=probe("plain"), progress=False)
    b = train_run(averaged, 0, evaluate=probe("ema"), progress=False)
    live_a = list(plain.model.parameters())
    live_b = list(averaged.model.parameters())
    assert a.final_loss == b.final_loss and all(torch.equal(x, y) for x, y in zip(live_a, live_b))
    assert all(torch.equal(s, p) for s, p in zip(seen["plain"], live_a))
    assert all(torch.equal(s, e) for s, e in zip(seen["ema"], averaged.ema.shadow))  # the average was tested
    assert not all(torch.equal(s, p) for s, p in zip(seen["ema"], live_b))


def test_edc_recipes_test_with_the_ema_and_bad_decays_refuse():
    assert get_recipe("edc").ema_decay == 0.99 and get_recipe("edc-in1k").ema_decay == 0.99
    assert get_recipe("sre2l").ema_decay == 0.0
    with pytest.raises(DDKitError, match="ema-decay must be in"):
        resolve_recipe(EvalConfig(recipe="edc", regime="hl", ema_decay=1.5), n_images=10, num_classes=2, ipc=5,
                       image_size=8)
