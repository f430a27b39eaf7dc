"""The recover family on the official unit of work (#26): mixed-class batches, DWA's ascent per IPC index, the
old per-class behaviour as named options, file-backed datasets and the driver's batch units."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from ddkit.data.filebacked import FileImageDataset
from ddkit.distributed import distill_sharded, parts_dir_for, scan_parts, scan_unit_parts
from ddkit.methods import create_method
from ddkit.methods.base import Unit, ipc_units
from ddkit.utils import DDKitError, make_generator
from tests.test_sre2l import _toy_teacher

REFERENCE = Path(__file__).with_name("recover_variant_reference.safetensors")


def _run(method: str, ds, t, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return create_method(method, **kw)(ds, t, device="cpu", progress=False)


def test_ipc_units_follow_the_official_loop():
    assert ipc_units(4, 2, 100) == [Unit(0, (0, 1, 2, 3)), Unit(1, (0, 1, 2, 3))]
    u = ipc_units(250, 1, 100)  # ImageNet-style groups of 100 classes, the last one smaller
    assert [len(x.classes) for x in u] == [100, 100, 50] and u[2].classes[0] == 200
    with pytest.raises(DDKitError):
        ipc_units(4, 1, 0)


def test_mixed_class_batch_bn_statistics_equal_a_hand_computation():
    """The first step's BN term is ONE set of statistics over the whole batch of one image per class, against the
    running statistics, and the CE is over that batch — computed by hand from the unit's generator."""
    ds, t = _toy_teacher()
    s = _run("sre2l", ds, t, ipc=2, iterations=1, jitter=0, seed=5)
    net = t.model.eval()
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for index in range(2):
        g = make_generator(5, "sre2l", "ipc", index, "group", 0)
        x0 = torch.randn(4, 3, 8, 8, generator=g)  # official init: one noise image per class, normalised space
        inputs = []
        hooks = [m.register_forward_hook(lambda mod, i, o: inputs.append(i[0].detach())) for m in bns]
        with torch.no_grad():
            logits = net(x0)
        for h in hooks:
            h.remove()
        whole, per_class = 0.0, 0.0
        for k, (a, bn) in enumerate(zip(inputs, bns)):
            mult = 10.0 if k == 0 else 1.0
            v = a.permute(1, 0, 2, 3).reshape(a.shape[1], -1)  # every image of the batch, every position
            mu, var = v.mean(1), v.var(1, unbiased=False)
            whole += mult * (float((mu - bn.running_mean).norm()) + float((var - bn.running_var).norm()))
            for c in range(4):  # what per-class statistics would give instead
                vc = a[c:c + 1].permute(1, 0, 2, 3).reshape(a.shape[1], -1)
                per_class += mult * (float((vc.mean(1) - bn.running_mean).norm())
                                     + float((vc.var(1, unbiased=False) - bn.running_var).norm())) / 4
        got = s.meta["unit_meta"][index]
        assert got["index"] == index and got["classes"] == [0, 3]
        assert got["bn_first"] == pytest.approx(whole, rel=1e-5)
        assert abs(per_class - whole) > 1e-3 * whole  # the hand check tells the two apart
        assert got["ce_first"] == pytest.approx(float(F.cross_entropy(logits, torch.arange(4))), rel=1e-5)
    # one row per (class, IPC index), classes in order, each class's rows in IPC-index order
    assert torch.equal(s.labels, torch.arange(4).repeat_interleave(2)) and s.meta["unit"] == "batch"


def test_dwa_moves_up_the_loss_of_a_class_balanced_real_batch_once_per_ipc_index(monkeypatch):
    import ddkit.methods.sre2l as sre2l_mod

    ds, t = _toy_teacher()
    original = {k: v.clone() for k, v in t.model.state_dict().items()}
    calls = []
    real_adjust = sre2l_mod.adjust_weights

    def spy(model, x, y, steps, rho, direction, **kw):  # kw: the official first step's input_grad (the default)
        unchanged = all(torch.equal(p, original[k]) for k, p in model.state_dict().items())  # restored before
        before = float(F.cross_entropy(model(x.detach()), y))
        saved = real_adjust(model, x, y, steps, rho, direction, **kw)
        calls.append(dict(unchanged=unchanged, before=before, after=float(F.cross_entropy(model(x), y)),
                          y=y.tolist(), direction=direction, steps=steps, rho=rho, kw=sorted(kw)))
        return saved

    monkeypatch.setattr(sre2l_mod, "adjust_weights", spy)
    s = _run("dwa", ds, t, ipc=3, iterations=2, seed=1)
    assert len(calls) == 3  # once per IPC index, not per class
    for c in calls:
        assert c["unchanged"] and c["after"] > c["before"]  # ascent on that batch; the previous index's undone
        assert c["y"] == [0, 1, 2, 3] and c["direction"] == "ascent" and (c["steps"], c["rho"]) == (12, 0.015)
        assert c["kw"] == ["input_grad"]  # the default is the official first step: the K passes' image gradients
    assert all(torch.equal(p, original[k]) for k, p in t.model.state_dict().items())  # the caller's teacher too
    # the init is one real image of every class per batch, never the same image twice within a class
    src = torch.tensor(s.meta["source_indices"]).view(4, 3)
    assert all(int(ds.labels[i]) == c for c in range(4) for i in src[c]) and all(len(set(r.tolist())) == 3 for r in src)


@pytest.mark.parametrize("method", ["sre2l", "cda", "dwa"])
def test_named_options_reproduce_the_behaviour_before_26(method):
    """unit=class (+ bn_target, DWA's direction=descent) gives the sets ddkit made at f891cbd, recorded in
    tests/recover_variant_reference.safetensors (tests/test_sre2l._toy_teacher, ipc 2, 6 steps, seed 3)."""
    ds, t = _toy_teacher()
    ref = load_file(str(REFERENCE))
    for bn_target in ("class", "running"):
        extra = {"direction": "descent"} if method == "dwa" else {}
        s = _run(method, ds, t, ipc=2, iterations=6, stat_images=8, seed=3, unit="class", bn_target=bn_target,
                 **extra)
        assert torch.equal(s.labels, ref[f"{method}.{bn_target}.labels"])
        assert torch.allclose(s.images, ref[f"{method}.{bn_target}.images"], atol=1e-5, rtol=0)
    new = _run(method, ds, t, ipc=2, iterations=6, stat_images=8, seed=3)
    assert not torch.allclose(new.images, ref[f"{method}.class.images"], atol=1e-3)  # the default did change


def test_batch_units_refuse_per_class_targets_and_class_subsets():
    ds, t = _toy_teacher()
    with pytest.raises(DDKitError, match="unit=class"):
        _run("sre2l", ds, t, ipc=1, iterations=1, bn_target="class")
    with pytest.raises(DDKitError, match="all classes"):
        create_method("sre2l", ipc=1, iterations=1)(ds, t, device="cpu", progress=False, classes=[0, 1])
    with pytest.raises(DDKitError, match="unit"):
        _run("sre2l", ds, t, ipc=1, iterations=1, unit="ipc")


def test_groups_of_classes_and_shards_by_unit(tmp_path):
    """classes_per_batch splits the classes into groups; --shard i/n splits the units; the bytes stay."""
    ds, t = _toy_teacher()
    m = create_method("cda", ipc=2, iterations=3, seed=2, classes_per_batch=3)
    ref = m(ds, t, device="cpu", progress=False)
    assert [u["classes"] for u in ref.meta["unit_meta"]] == [[0, 2], [3, 3], [0, 2], [3, 3]]
    out = tmp_path / "cda"
    assert distill_sharded(m, ds, t, out, shard="0/2", progress=False) is None
    assert sorted(scan_unit_parts(parts_dir_for(out))) == [(0, 0), (1, 0)] and not scan_parts(parts_dir_for(out))
    merged = distill_sharded(m, ds, t, out, shard="1/2", progress=False)
    assert torch.equal(merged.images, ref.images) and torch.equal(merged.labels, ref.labels)
    other = tmp_path / "other"
    parts_dir_for(other).mkdir()
    (parts_dir_for(other) / "class_00000.safetensors").write_bytes(b"")  # a per-class run's (broken) part
    with pytest.raises(DDKitError, match="per-class"):  # never mixed into a batch-unit set
        distill_sharded(m, ds, t, other, progress=False, resume=True)


def _file_backed(ds, root: Path) -> FileImageDataset:
    files = []
    for i in range(len(ds)):
        f = root / f"{i}.png"
        Image.fromarray(ds.images[i].permute(1, 2, 0).numpy()).save(f)
        files.append(str(f))
    return FileImageDataset(files, ds.labels, ds.classes, ds.mean, ds.std, name="toy", image_size=8, resize_to=8)


@pytest.mark.parametrize("method,kw", [("sre2l", {}), ("dwa", {}), ("dwa", {"unit": "class"}),
                                       ("sre2l", {"unit": "class", "bn_target": "class", "stat_images": 8})])
def test_recover_family_runs_on_file_backed_datasets(tmp_path, method, kw):
    ds, t = _toy_teacher()
    fb = _file_backed(ds, tmp_path)
    with pytest.raises(DDKitError):
        fb.images  # nothing of the method may touch the whole tensor
    a = _run(method, fb, t, ipc=2, iterations=2, seed=4, **kw)
    b = _run(method, fb.materialize(progress=False), t, ipc=2, iterations=2, seed=4, **kw)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
