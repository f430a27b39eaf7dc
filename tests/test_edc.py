"""EDC: the class-aware targets and the 0.5/0.5 global/class hook loss by hand; the teachers' turns across units;
a short recover lowering the loss; the real start; presets and refusals; the CLI with two teachers and the native
protocol; the demo running it."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.nn.functional as F

from ddkit.cli import main
from ddkit.evaluate.native import resolve_protocol
from ddkit.methods import create_method
from ddkit.methods.edc import edc_units, resolve, turn_offset
from ddkit.methods.gsm import ClassStatHooks, collect_class_targets, image_stats
from ddkit.teachers import Teacher
from ddkit.teachers.committee import Committee
from ddkit.utils import DDKitError
from tests.conftest import cli_teachers
from tests.test_gvbsm import _Net, _cells_by_hand, _stats
from tests.test_sre2l import _bn_teacher, _toy_teacher

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(ds, t, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return create_method("edc", **kw)(ds, t, device="cpu", progress=False)


def _per_image(a, cell):
    """(var, mean, patch mean, patch var) of each image alone, by hand (within-image statistics)."""
    out = []
    for img in a:
        v = img.reshape(img.shape[0], -1)
        pm, pv = _cells_by_hand(img[None], cell)
        out.append((v.var(1, unbiased=False), v.mean(1), pm, pv))
    return [torch.stack([o[i] for o in out]) for i in range(4)]


def _collected(num_classes=3):
    net = _Net().eval()
    hooks = ClassStatHooks(net, cell=4, alpha=0.6, drop_rate=0.0, num_classes=num_classes)
    g = torch.Generator().manual_seed(2)
    real = [(torch.randn(4, 3, 8, 8, generator=g), torch.tensor([0, 2, 0, 1])),
            (torch.randn(2, 3, 8, 8, generator=g), torch.tensor([2, 2]))]
    collect_class_targets(hooks, net, real)
    return net, hooks, real


def test_image_stats_are_within_image_statistics():
    x = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    got = image_stats(x, 4)
    want = _per_image(x, 4)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got, want))
    assert len(image_stats(x)) == 2 and torch.allclose(image_stats(x)[1], x.mean((2, 3)))


def test_class_targets_and_the_step_target_equal_a_hand_computation():
    net, hooks, real = _collected()
    x = torch.cat([r for r, _ in real])
    y = torch.cat([c for _, c in real])
    with torch.no_grad():
        inputs = {0: x, 1: net.c1(x), 2: F.relu(net.b1(net.c1(x)))}  # conv c1, bn b1, conv c2
    assert hooks.counts.tolist() == [2, 1, 3]
    for i, h in enumerate(hooks.hooks):
        per = _per_image(inputs[i], 4)[:2 if h.kind == "bn" else 4]
        for k in range(3):
            want = [p[y == k].mean(0) for p in per]  # per-class mean of the per-image statistics
            assert all(torch.allclose(t[k], w, atol=1e-5) for t, w in zip(h.cls_target, want))
    # the step's class target: the mean over the batch's ROWS (class 2 twice counts twice)
    rows = torch.tensor([2, 0, 2])
    t = hooks.hooks[1].cls_target[1]
    assert torch.allclose(t[rows].mean(0), (2 * t[2] + t[0]) / 3)
    net2 = _Net().eval()
    with pytest.raises(DDKitError, match="class 2 had no image"):
        collect_class_targets(ClassStatHooks(net2, 4, 0.5, 0.0, num_classes=3), net2,
                              [(torch.randn(2, 3, 8, 8), torch.tensor([0, 1]))])


def test_swap_class_patch_trades_the_conv_class_patch_targets():
    _, plain, real = _collected()
    net = _Net().eval()
    sw = ClassStatHooks(net, cell=4, alpha=0.6, drop_rate=0.0, num_classes=3, swap_patch=True)
    collect_class_targets(sw, net, real)
    a, b = plain.hooks[0].cls_target, sw.hooks[0].cls_target
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[3]) and torch.equal(a[3], b[2])
    assert torch.equal(plain.hooks[1].cls_target[0], sw.hooks[1].cls_target[0])  # BN: nothing to swap


def test_hook_loss_is_half_global_plus_half_class_by_hand():
    net, hooks, _ = _collected()
    hooks.reset()
    y = torch.tensor([1, 2])
    hooks.labels = y
    x1, x2 = (torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(s)) for s in (4, 5))
    net(x1)
    hooks.loss(10.0)
    net(x2)
    got = hooks.loss(10.0)
    with torch.no_grad():
        total = 0.0
        for i, layer in enumerate(("in1", "bn", "in2")):
            def inp(x):
                a = net.c1(x)
                return x if layer == "in1" else a if layer == "bn" else F.relu(net.b1(a))
            s1, s2 = _stats(inp(x1), 4), _stats(inp(x2), 4)
            ema = [0.6 * a + 0.4 * b for a, b in zip(s1, s2)]  # (mean, var, patch mean, patch var)
            h = hooks.hooks[i]
            cls = [t[y].mean(0) for t in h.cls_target]  # (var, mean[, patch mean, patch var])
            if layer == "bn":
                glob = (net.b1.running_var - ema[1]).norm() + (net.b1.running_mean - ema[0]).norm()
                clas = (cls[0] - ema[1]).norm() + (cls[1] - ema[0]).norm()
            else:
                tgt = h.target  # (mean, var, patch mean, patch var)
                glob = sum((tgt[j] - ema[j]).norm() for j in range(4))
                clas = (cls[0] - ema[1]).norm() + (cls[1] - ema[0]).norm() + (cls[2] - ema[2]).norm() \
                    + (cls[3] - ema[3]).norm()
            total = total + (10.0 if i == 0 else 1.0) * (0.5 * glob + 0.5 * clas)
    assert torch.allclose(got, total, atol=1e-4)
    assert not torch.allclose(got, total * 2, atol=1e-4)
    hooks.remove()


def test_teachers_take_turns_in_order_continuing_across_units():
    ds, _ = _toy_teacher()
    ts = [Teacher(_bn_teacher(4, 8), "convnet-d1-bn", ds.classes, ds.mean, ds.std, 8) for _ in range(3)]
    order: list = []
    for i, t in enumerate(ts):
        t.model.register_forward_pre_hook(lambda m, a, i=i: order.append((i, a[0].shape[0])))
    s = _run(ds, Committee(ts), ipc=2, iterations=4, batch_size=4, stat_images=3, stat_batch=5, seed=1)
    passes = [(k, n) for k in range(3) for n in (5, 5, 2)]
    # the official counter runs on over the batches: unit 1 starts at 4 mod 3 = teacher 1
    assert order == passes + [(0, 4), (1, 4), (2, 4), (0, 4)] + [(1, 4), (2, 4), (0, 4), (1, 4)]
    assert [u["first_teacher"] for u in s.meta["unit_meta"]] == [0, 1]
    units = edc_units(ds, create_method("edc", ipc=2, batch_size=4).config)
    assert [u.classes for u in units] == [(0, 1), (2, 3)]
    assert [turn_offset(units, u, 75, 8) for u in units] == [0, 75 % 8]


def test_a_short_recover_lowers_the_loss_and_starts_from_real_images():
    ds, t = _toy_teacher()
    s = _run(ds, t, ipc=2, iterations=40, lr=0.1, stat_images=6, batch_size=8, seed=3)
    for u in s.meta["unit_meta"]:
        curve = u["loss_curve"]
        assert sum(curve[-5:]) / 5 < sum(curve[:5]) / 5
    assert s.native == "edc" and s.meta["recover"]["init"] == "real" and s.meta["recover"]["rrc_min"] == 0.08
    src = torch.tensor(s.meta["source_indices"])
    assert len(src) == 8 and all(int(ds.labels[i]) == c for i, c in zip(src, s.labels))
    start = _run(ds, t, ipc=2, iterations=1, lr=1e-12, stat_images=6, batch_size=8, seed=3)  # ~ the start itself
    real = ds.images[src].float() / 255
    close = [min(float((a - b).abs().max()) for b in (r, r.flip(2))) for a, r in zip(start.images, real)]
    assert max(close) < 1e-3
    assert float(s.images.min()) >= 0 and float(s.images.max()) <= 1


def test_presets_and_refusals():
    ds, t = _toy_teacher()
    fam, p = resolve(create_method("edc", preset="imagenet", init="real").config, 224)
    assert (fam, p["iterations"], p["r_loss"], p["batch_size"], p["lr"], p["alpha"], p["rrc_min"], p["cell"]) == \
        ("imagenet", 1000, 0.1, 20, 0.05, 0.8, 0.5, 16)
    fam, p = resolve(create_method("edc").config, 32)
    assert (fam, p["iterations"], p["r_loss"], p["batch_size"], p["drop_rate"], p["init"]) == \
        ("cifar", 75, 0.01, 10, 0.0, "real")
    with pytest.raises(DDKitError, match="full batch.*fewer than the 4 that 1 mosaics need"):
        _run(ds, t, ipc=1, iterations=1, preset="imagenet")  # its mosaic start needs 64-image batches
    with pytest.raises(DDKitError, match="drop-rate"):
        _run(ds, t, ipc=1, iterations=1, drop_rate=1.0)
    with pytest.raises(DDKitError, match="unknown preset"):
        _run(ds, t, ipc=1, iterations=1, preset="mnist")
    noise = _run(ds, t, ipc=1, iterations=2, init="noise", stat_images=4)
    assert "source_indices" not in noise.meta and noise.meta["recover"]["init"] == "noise"


def test_cli_distills_with_two_teachers_and_the_native_protocol_is_edc(tmp_path):
    data = ["--dataset", "digits", "--device", "cpu", "--no-progress"]
    paths = cli_teachers(tmp_path)
    out = tmp_path / "set"
    assert main(["distill", *data, "--method", "EDC", *paths, "--preset", "cpu", "--iterations", "4",
                 "--stat-images", "5", "--ipc", "1", "--skip-teacher-check", "--output", str(out)]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["method"] == "edc" and meta["native"] == "edc"
    assert meta["recover"]["teachers"] == ["convnet-d1-bn"] * 2 and meta["teacher_arch"].startswith("committee")
    from ddkit.distilled import load_distilled
    from ddkit.evaluate.protocol import EvalConfig
    from ddkit.evaluate.recipes import get_recipe
    proto = resolve_protocol(EvalConfig(), load_distilled(out))
    assert proto.native == "edc" and proto.cfg.recipe == "edc" and proto.cfg.regime == "slkd"
    r = get_recipe("edc")
    assert (r.slkd_loss, r.ce_weight, r.ce_unmixed, r.batch_size, r.milestones, r.gamma) == \
        ("mse_ce", 0.025, True, 10, (0.8, 0.9, 0.95), 0.5)
    big = get_recipe("edc-in1k")
    assert (big.schedule, big.rrc_min, big.weight_decay, big.ce_weight) == ("quarter_cosine", 0.5, 0.01, 0.025)


def test_the_demo_runs_edc(tmp_path):
    from ddkit.demo import DemoConfig, run_demo
    from tests.test_demo import TINY

    results = run_demo(tmp_path, device="cpu", progress=False, cfg=DemoConfig(methods=("edc",), **TINY))
    doc = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {"edc"} and doc["status"]["edc"] == "ok", doc["status"]


def test_units_shard_and_merge_to_the_same_set(tmp_path):
    """Each unit's start, draws and turn depend on (seed, unit) alone: two shards = one process."""
    from ddkit.distributed import distill_sharded

    ds, t = _toy_teacher()
    other = Teacher(_bn_teacher(4, 8), "convnet-d1-bn", ds.classes, ds.mean, ds.std, 8)
    c = Committee([t, other])
    m = create_method("edc", ipc=2, iterations=3, batch_size=4, stat_images=4, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = m(ds, c, device="cpu", progress=False)
        out = tmp_path / "set"
        assert distill_sharded(m, ds, c, out, shard="1/2", progress=False) is None
        merged = distill_sharded(m, ds, c, out, shard="0/2", progress=False)
    assert torch.equal(merged.images, ref.images) and merged.native == "edc"
    assert merged.meta["source_indices"] == ref.meta["source_indices"]
