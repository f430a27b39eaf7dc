"""bench/parity/tm_grad.py (issue #27, the MTT/DATM same-start gradient checks): the pieces that put the official
code and ddkit in the same state and compare them — the shared draws (Replay, DSADraws), the optimiser-step
capture, the relative difference and the pass rule (ddkit within the floor, the control outside it)."""
from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import load_bench_script

mg = load_bench_script("parity/tm_grad.py")


def test_rel_diff():
    b = torch.tensor([3.0, 4.0])
    assert mg.rel_diff(b.clone(), b) == 0.0
    assert mg.rel_diff(torch.tensor([3.0, 5.0]), b) == pytest.approx(0.2)
    assert mg.rel_diff(torch.zeros(2), torch.zeros(2)) == 0.0
    assert math.isinf(mg.rel_diff(torch.ones(2), torch.zeros(2)))


def test_replay_serves_the_same_draws_and_leaves_other_lengths_to_torch():
    perms = [torch.tensor([2, 0, 1]), torch.tensor([1, 2, 0])]
    r = mg.Replay(3, perms, [5, 7])
    original = torch.randperm
    with r.active():
        assert torch.randperm(3).tolist() == [2, 0, 1]
        assert sorted(torch.randperm(4, generator=torch.Generator().manual_seed(0)).tolist()) == [0, 1, 2, 3]
        assert torch.randperm(3, generator=torch.Generator()).tolist() == [1, 2, 0]  # the generator is ignored
        assert [r.start(0, 6), r.start(2, 8)] == [5, 7]
    assert torch.randperm is original
    assert r.served == {"randperm": 2, "start_epoch": 2} and r.bounds == [[0, 6], [2, 8]]
    with pytest.raises(ValueError, match="outside"):  # a replayed draw the side could not have made
        mg.Replay(3, perms, [5]).start(0, 5)
    fixed = mg.Replay(3, perms, [], fixed={2: torch.tensor([1, 0])})
    with fixed.active():
        assert torch.randperm(2).tolist() == [1, 0] and torch.randperm(2).tolist() == [1, 0]
    assert fixed.served["randperm"] == 0
    # a second replay from the same lists serves the same sequence again (one per run)
    with mg.Replay(3, perms, [5, 7]).active():
        assert torch.randperm(3).tolist() == [2, 0, 1]


def test_capture_steps_records_grads_and_values_and_nudges_only_images():
    img = torch.ones(2, 1, 2, 2, requires_grad=True)
    lr = torch.tensor(0.5, requires_grad=True)
    rec = {}
    step, init = torch.optim.SGD.step, torch.optim.SGD.__init__
    with mg.capture_steps(rec, nudge=0.25):
        opt_i = torch.optim.SGD([img], lr=0.1)
        opt_l = torch.optim.SGD([lr], lr=0.1)
        assert torch.allclose(img.detach(), torch.full_like(img, 1.25)) and float(lr) == 0.5
        loss = (img * lr).sum()
        loss.backward()
        opt_i.step()
        opt_l.step()
    assert torch.optim.SGD.step is step and torch.optim.SGD.__init__ is init
    assert torch.allclose(rec["grad_images"][0], torch.full((2, 1, 2, 2), 0.5))
    assert float(rec["grad_syn_lr"][0]) == pytest.approx(1.25 * 8)
    assert torch.allclose(rec["before_images"][0], torch.full_like(img, 1.25))
    assert torch.allclose(rec["after_images"][0], torch.full_like(img, 1.25 - 0.05))
    assert float(rec["after_syn_lr"][0]) == pytest.approx(0.5 - 0.1 * 10)


def test_compare_runs_and_verdict():
    d = torch.float64
    ref = {"grad_images": [torch.ones(4, dtype=d)], "grad_syn_lr": [torch.tensor(2.0, dtype=d)],
           "loss": [torch.tensor(1.0, dtype=d)], "after_images": [torch.ones(4, dtype=d)]}

    def shifted(eps):
        return {k: [v[0] + eps] for k, v in ref.items()}

    same, floor, far = (mg.compare_runs(shifted(e), ref) for e in (1e-7, 1e-5, 1e-2))
    assert set(floor) == {"grad_images", "grad_syn_lr", "loss", "final_images"}
    assert floor["loss"][0] == pytest.approx(1e-5, rel=1e-3)
    v = mg.grad_verdict(same, floor, far)
    assert v["pass"] and v["ddkit_within_floor"] and not v["control_within_floor"]
    assert not mg.grad_verdict(far, floor, far)["pass"]  # ddkit outside the floor
    void = mg.grad_verdict(same, floor, same)  # a control inside the floor voids the check
    assert not void["pass"] and void["control_within_floor"]
    # one quantity outside the floor is enough to fail
    one = dict(same, loss=[1.0])
    assert not mg.grad_verdict(one, floor, far)["ddkit_within_floor"]
    # the verdict is the first iteration's (one state); later ones are a drift measure, judged apart
    later = {q: v + [1.0] for q, v in same.items()}
    floor2 = {q: v + [1e-3] for q, v in floor.items()}
    v2 = mg.grad_verdict(later, floor2, far)
    assert v2["pass"] and not v2["later_iterations_within_floor"]
    assert mg.grad_verdict(same, floor, far)["later_iterations_within_floor"]


def test_dsa_draws_hand_the_official_draws_to_ddkits_sampler():
    from ddkit.augment.base import OneOf
    from ddkit.augment.dsa import Flip, Scale

    d = mg.DSADraws("test_parity_tm_grad.py", seed=3)

    def official_call(n):  # an official-style DiffAugment call: the op, then its per-sample draws
        which = torch.randint(0, 2, size=(1,))
        return which, torch.rand(n), torch.rand(n)

    elsewhere = compile("torch.rand(5)", "elsewhere.py", "eval")
    with d.official():
        which, sx, sy = official_call(4)
        eval(elsewhere)  # a draw from any other file is torch's own and not recorded
    assert len(d.draws) == 3 and torch.equal(d.draws[1], sx)
    with d.official():  # a second official run draws the same again (the floor run)
        again = official_call(4)
    assert all(torch.equal(x, y) for x, y in zip(again, (which, sx, sy)))

    aug = OneOf([Flip(), Scale()])
    d.draws = [torch.tensor([1]), sx, sy]
    with d.ddkit():
        p = aug.sample(4, (8, 8), generator=torch.Generator().manual_seed(0))
    lo = 1 / 1.2
    assert int(p["which"][0]) == 1
    assert torch.allclose(p["1.sx"], sx * (1.2 - lo) + lo) and torch.allclose(p["1.sy"], sy * (1.2 - lo) + lo)
    assert OneOf.sample is not None and "replayed" not in OneOf.sample.__name__
    d.draws = [torch.tensor([1]), sx]  # fewer draws than ddkit's op asks for: refused, not silently mixed
    with pytest.raises(ValueError, match="more augmentation draws"), d.ddkit():
        aug.sample(4, (8, 8), generator=torch.Generator().manual_seed(0))
    d.draws = [torch.tensor([0]), torch.rand(3)]  # a draw of the wrong size
    with pytest.raises(ValueError, match="does not fit"), d.ddkit():
        aug.sample(4, (8, 8), generator=torch.Generator().manual_seed(0))


def test_start_randint_serves_only_the_start_epoch_call():
    r = mg.Replay(3, [], [4])
    wrapped = r.start_randint(caller="start_caller.py")
    here = torch.randint(0, 3, (2,), generator=torch.Generator().manual_seed(1))  # any other caller: torch's own
    assert torch.equal(wrapped(0, 3, (2,), generator=torch.Generator().manual_seed(1)), here)
    call = compile("wrapped(2, 6, (1,), generator=None)", "start_caller.py", "eval")
    assert eval(call).tolist() == [4] and r.bounds == [[2, 6]]


def test_run_ddkit_replayed_serves_records_and_restores():
    """ddkit's side of a gradient check: the start stand-in and the replayed permutations are in place while the
    method runs, each logged loss and SGD step is recorded, and everything is put back after, also on an error."""
    import types

    from ddkit.methods import matching_ops
    owner = types.SimpleNamespace(start="the method's own")
    step, randperm, randint = matching_ops.LossLog.step, torch.randperm, torch.randint
    seen = {}

    def run():
        seen["start"], seen["perm"] = owner.start, torch.randperm(3).tolist()
        log = matching_ops.LossLog(2, "x", False, "mtt")
        p = torch.ones(2, 1, 1, 1, requires_grad=True)
        opt = torch.optim.SGD([p], lr=0.5)
        for it, loss in enumerate((2.0, 1.5)):
            p.grad = torch.ones_like(p)
            opt.step()
            log.step(it, loss, {})

    rec = mg.run_ddkit_replayed(run, mg.Replay(3, [torch.tensor([2, 0, 1])], [5]), (owner, "start", "stand-in"))
    assert seen == {"start": "stand-in", "perm": [2, 0, 1]}
    assert [float(v) for v in rec["loss"]] == [2.0, 1.5] and len(rec["grad_images"]) == 2
    assert rec["served"] == {"randperm": 1, "start_epoch": 0} and rec["seconds"] >= 0
    assert owner.start == "the method's own" and matching_ops.LossLog.step is step
    assert torch.randperm is randperm and torch.randint is randint

    def failing():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        mg.run_ddkit_replayed(failing, mg.Replay(3, [], []), (owner, "start", "stand-in"))
    assert owner.start == "the method's own" and matching_ops.LossLog.step is step and torch.randint is randint
