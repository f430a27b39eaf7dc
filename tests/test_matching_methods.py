"""The five matching methods as registered methods: end to end on toy data, coupling flags, meta, NaN."""
from __future__ import annotations

import pytest
import torch

from ddkit.cli import main
from ddkit.methods import create_method, method_spec
from ddkit.teachers import Teacher
from ddkit.teachers.experts import ExpertConfig, train_experts
from ddkit.models import create_model
from ddkit.utils import DDKitError
from tests.conftest import make_toy

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def toy_buffer(tmp_path_factory):
    train = make_toy(n_per_class=6, num_classes=3, size=8)
    out = tmp_path_factory.mktemp("buf") / "experts"
    cfg = ExpertConfig(arch="mlp", num_experts=2, epochs=4, batch_size=9, subset_per_class=0, test_limit=0)
    train_experts(train, None, cfg, out, device=CPU, progress=False)
    return train, out


def test_coupling_flags():
    assert method_spec("dm").class_separable
    for name in ("dc", "dsa", "mtt", "datm"):  # dc/dsa: the inner loop trains on every class's images
        assert not method_spec(name).class_separable, name
    assert method_spec("distribution-matching").name == "dm" and method_spec("tm").name == "mtt"


@pytest.mark.parametrize("name,opts", [
    ("dc", dict(iterations=1, outer_loop=2, inner_loop=1, batch_real=4)),
    ("dsa", dict(iterations=1, outer_loop=2, inner_loop=1, batch_real=4)),
    ("dm", dict(iterations=3, batch_real=4)),
])
def test_dc_dsa_dm_end_to_end(name, opts):
    ds = make_toy(n_per_class=6, num_classes=3, size=8)
    out = create_method(name, ipc=2, model="mlp", **opts)(ds, None, device=CPU, progress=False)
    assert out.images.shape == (6, 3, 8, 8) and out.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.isfinite(out.images).all()
    assert out.meta["preset"] == "paper" and out.meta["settings"]["iterations"] == opts["iterations"]
    curve = out.meta["loss_curve"]
    assert curve and (isinstance(curve[0][0], int) or isinstance(curve[0][0], list))


def test_mtt_and_datm_end_to_end_with_learned_and_teacher_labels(toy_buffer):
    train, buf = toy_buffer
    common = dict(ipc=2, model="mlp", buffer=str(buf), preset="cpu", iterations=2, syn_steps=3, max_start_epoch=2)
    out = create_method("mtt", **common)(train, None, device=CPU, progress=False)
    assert out.images.shape == (6, 3, 8, 8) and out.soft == {}
    assert out.meta["preset"] == "cpu" and len(out.meta["loss_curve"]) == 3 and out.meta["syn_lr"] > 0
    net = create_model("mlp", num_classes=3, image_size=8, channels=3)
    teacher = Teacher(net, "mlp", train.classes, train.mean, train.std, 8, 3)
    out = create_method("datm", **common, threshold=10.0)(train, teacher, device=CPU, progress=False)
    assert out.soft["learned"].shape == (6, 3) and out.soft["soft"].shape == (6, 3)
    assert torch.allclose(out.soft["soft"], teacher.logits(out.images), atol=1e-5)
    assert out.meta["space"] == "meanstd" and out.meta["skipped_iterations"] == 0
    with pytest.raises(DDKitError, match="couples classes"):  # sharding by class is refused up front
        create_method("datm", **common)(train, None, device=CPU, progress=False, classes=[0])
    with pytest.raises(DDKitError, match="needs an expert buffer"):
        create_method("mtt", ipc=2, model="mlp")(train, None, device=CPU, progress=False)
    with pytest.raises(DDKitError, match="fewer than max_start_epoch"):
        create_method("datm", **{**common, "max_start_epoch": 4})(train, None, device=CPU, progress=False)


def test_nan_loss_stops_with_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "set"
    rc = main(["distill", "--dataset", "digits", "--device", "cpu", "--no-progress", "--method", "dm", "--ipc", "1",
               "--model", "mlp", "--iterations", "3", "--batch-real", "8", "--lr-img", "1e30", "--output", str(out)])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "iteration 1 (lr_img=1e+30)" in err[0] and "nothing was written" in err[0]
    assert not out.exists()
    # the driver's resume folder may exist, but it holds no part of the failed class (class 0 here)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


@pytest.mark.parametrize("name", ["mtt", "datm"])
def test_trajectory_matching_unrolls_with_freed_memory_returned(name, toy_buffer, monkeypatch):
    # The unrolled graph is MTT's live set; under a never-returned heap it fragmented into a 17.7 GiB peak
    # (bench/results/mtt_allocator_memory_cpu.json), so every unroll must run inside return_freed_memory.
    import contextlib

    import ddkit.methods.mtt as mtt_mod

    inside, seen = [False], []

    @contextlib.contextmanager
    def recording():
        inside[0] = True
        try:
            yield True
        finally:
            inside[0] = False

    real_unroll = mtt_mod.unroll
    monkeypatch.setattr(mtt_mod, "return_freed_memory", recording)
    monkeypatch.setattr(mtt_mod, "unroll", lambda *a, **k: (seen.append(inside[0]), real_unroll(*a, **k))[1])
    train, buf = toy_buffer
    create_method(name, ipc=2, model="mlp", buffer=str(buf), preset="cpu", iterations=2, syn_steps=2,
                  max_start_epoch=2)(train, None, device=CPU, progress=False)
    assert seen == [True, True, True] and not inside[0]
