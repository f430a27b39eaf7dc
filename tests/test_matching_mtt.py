"""MTT / DATM and the expert buffer: an exact N = M replay, DATM's range rule, buffer checks, resume, shards."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from ddkit.augment import Identity
from ddkit.data.base import ImageDataset
from ddkit.methods.matching_ops import fresh_net
from ddkit.methods.mtt import DATMConfig, MTTConfig, settings
from ddkit.methods.mtt_ops import Batches, FlatNet, datm_upper_bound, param_loss, unroll
from ddkit.teachers.experts import ExpertConfig, load_buffer, train_experts
from ddkit.utils import DDKitError, make_generator
from tests.conftest import make_toy

CPU = torch.device("cpu")


def tiny_experts(tmp_path, name="buf", **kw):
    """Full-batch, unaugmented MLP experts on 16 toy images: one SGD step per epoch."""
    train = make_toy(n_per_class=4, num_classes=4, size=6)
    test = make_toy(n_per_class=3, num_classes=4, size=6, seed=1, split="test")
    opts = dict(arch="mlp", num_experts=2, epochs=4, batch_size=16, dsa_strategy="none", subset_per_class=0,
                test_limit=0)
    opts.update(kw)
    cfg = ExpertConfig(**opts)
    out = tmp_path / name
    train_experts(train, test, cfg, out, device=CPU, progress=False)
    return train, out, cfg


def test_mtt_unroll_with_n_equal_m_on_the_experts_data_and_lr_reproduces_the_expert(tmp_path):
    train, out, cfg = tiny_experts(tmp_path)
    buf = load_buffer(out, train, arch="mlp", zca=False, need_epochs=4)
    assert buf.num_experts == 2 and buf.trajectory(0).shape[0] == 5
    fnet = FlatNet(fresh_net("mlp", train, 0, CPU))
    syn = buf.space.encode(train.images)
    traj = buf.trajectory(1)
    g = make_generator(0, "t")
    start, target = traj[1], traj[3]  # M = 2 epochs = 2 full-batch steps
    lr = torch.tensor(cfg.lr, requires_grad=True)
    student = unroll(fnet, start, syn, train.labels, lr, 2, Batches(len(syn), None, g), Identity(), g)
    loss = param_loss(student, start, target)
    assert float(loss.detach()) < 1e-8
    loss.backward()
    assert lr.grad is not None and torch.isfinite(lr.grad)
    wrong = unroll(fnet, start, syn, train.labels, torch.tensor(3 * cfg.lr), 2, Batches(len(syn), None, g),
                   Identity(), g)
    assert float(param_loss(wrong, start, target).detach()) > 1.0  # a wrong step size is far from the expert


def test_datm_range_schedule_matches_the_official_rule():
    # configs/CIFAR10/ConvIN/IPC10.yaml: current 10, max 20, expansion_end 1000 (DATM.py:485-491)
    rule = lambda it: datm_upper_bound(it, 20, 10, 1000, True)  # noqa: E731
    assert [rule(it) for it in (0, 99, 100, 500, 999, 1000, 5000)] == [10, 10, 11, 15, 19, 20, 20]
    # IPC50: current 20, max 40, expansion_end 2000
    assert [datm_upper_bound(it, 40, 20, 2000, True) for it in (0, 150, 1000, 1999, 2000)] == [20, 21, 30, 39, 40]
    assert datm_upper_bound(0, 4, 20, 3000, False) == 4  # IPC1: sequential generation off
    s = settings(DATMConfig(ipc=10), "cifar10")
    assert (s["current_max_start_epoch"], s["max_start_epoch"], s["expansion_end_epoch"], s["sequential_generation"],
            s["lr_img"], s["lr_y"], s["threshold"], s["syn_steps"]) == (10, 20, 1000, True, 100.0, 2.0, 1.0, 80)
    s1 = settings(DATMConfig(ipc=1), "cifar10")
    assert (s1["max_start_epoch"], s1["sequential_generation"], s1["threshold"], s1["lr_lr"]) == (4, False, 1.1, 1e-7)
    assert settings(MTTConfig(ipc=10), "cifar10")["max_start_epoch"] == 20
    cpu = settings(MTTConfig(ipc=10, preset="cpu"), "cifar10")
    assert (cpu["iterations"], cpu["lr_img"], cpu["lr_lr"], cpu["zca"]) == (30, 1000.0, 1e-7, False)
    assert settings(DATMConfig(ipc=10, preset="cpu"), "cifar10")["lr_img"] == 100.0


def test_each_dataset_gets_its_own_official_row():
    """CIFAR-100 and Tiny-ImageNet rows are DATM's own YAMLs, not CIFAR-10's (configs/<ds>/ConvIN/IPC*.yaml)."""
    c100 = settings(DATMConfig(ipc=10), "cifar100")  # configs/CIFAR-100/ConvIN/IPC10.yaml
    assert (c100["max_start_epoch"], c100["current_max_start_epoch"], c100["expansion_end_epoch"], c100["lr_img"],
            c100["lr_y"], c100["batch_syn"]) == (50, 30, 2000, 1000.0, 10.0, 1000)
    c100_1 = settings(DATMConfig(ipc=1), "cifar100")
    assert (c100_1["syn_steps"], c100_1["expert_epochs"]) == (40, 3)
    assert settings(DATMConfig(ipc=50), "cifar100")["init"] == "real"  # pix_init: real in that YAML only
    tiny = settings(DATMConfig(ipc=10), "tiny-imagenet")  # configs/TinyImageNet/ConvIN/IPC10.yaml
    assert (tiny["model"], tiny["syn_steps"], tiny["min_start_epoch"], tiny["max_start_epoch"],
            tiny["sequential_generation"], tiny["lr_lr"], tiny["batch_syn"]) == ("convnet-d4", 40, 10, 50, False,
                                                                              1e-4, 500)
    assert settings(DATMConfig(ipc=10), "cifar10")["model"] == "convnet-d3"
    m100 = settings(MTTConfig(ipc=1), "cifar100")  # readme.md:88
    assert (m100["syn_steps"], m100["expert_epochs"], m100["max_start_epoch"], m100["zca"], m100["lr_img"],
            m100["lr_lr"]) == (20, 3, 20, True, 1000.0, 1e-5)
    assert settings(MTTConfig(ipc=50), "cifar100")["batch_syn"] == 125
    assert settings(MTTConfig(ipc=10, zca=False), "tiny-imagenet")["lr_img"] == 1e4
    assert settings(MTTConfig(ipc=10), "cifar10") != settings(MTTConfig(ipc=10), "cifar100")


def test_a_missing_row_refuses_with_one_line_naming_what_to_pass():
    with pytest.raises(DDKitError, match="no official row for cifar10 at IPC 20.*pass --syn-steps --expert-epochs "
                                         "--max-start-epoch --lr-img --lr-lr --lr-y"):
        settings(DATMConfig(ipc=20), "cifar10")
    with pytest.raises(DDKitError, match="no official row for this dataset at IPC 10.*pass --zca --lr-img --lr-lr \\(or"):
        settings(MTTConfig(ipc=10, syn_steps=5, expert_epochs=2, max_start_epoch=3), None)
    with pytest.raises(DDKitError, match="does not give zca; pass --zca"):  # the Tiny MTT row has no ZCA cell
        settings(MTTConfig(ipc=10), "tiny-imagenet")
    given = settings(MTTConfig(ipc=10, syn_steps=5, expert_epochs=2, max_start_epoch=3, zca=False, lr_img=10.0,
                               lr_lr=1e-6), None)
    assert (given["syn_steps"], given["iterations"], given["model"]) == (5, 5000, "convnet-d3")  # distill.py rest
    assert settings(DATMConfig(ipc=20, preset="cpu"), None)["lr_img"] == 100.0  # the CPU preset needs no row


def test_buffer_checks_fail_with_one_line(tmp_path):
    train, out, _ = tiny_experts(tmp_path)
    with pytest.raises(DDKitError, match="no expert buffer"):
        load_buffer(tmp_path / "nothing", train, arch="mlp", zca=False, need_epochs=2)
    other = ImageDataset(train.images, train.labels, train.classes, train.mean, train.std, name="other")
    with pytest.raises(DDKitError, match="trained on 'toy'"):
        load_buffer(out, other, arch="mlp", zca=False, need_epochs=2)
    with pytest.raises(DDKitError, match="mlp experts but the distillation uses convnet-d3"):
        load_buffer(out, train, arch="convnet-d3", zca=False, need_epochs=2)
    with pytest.raises(DDKitError, match="meanstd inputs but the distillation asks for zca"):
        load_buffer(out, train, arch="mlp", zca=True, need_epochs=2)
    renorm = ImageDataset(train.images, train.labels, train.classes, [0.4] * 3, train.std, name="toy")
    with pytest.raises(DDKitError, match="mean/std.*pass --norm official"):
        load_buffer(out, renorm, arch="mlp", zca=False, need_epochs=2)
    with pytest.raises(DDKitError, match="4 epochs per expert, fewer than max_start_epoch \\+ expert_epochs = 6"):
        load_buffer(out, train, arch="mlp", zca=False, need_epochs=6)
    with pytest.raises(DDKitError, match="other settings"):  # same folder, different recipe: refused
        train_experts(train, None, ExpertConfig(arch="mlp", num_experts=2, epochs=5, batch_size=16,
                                                dsa_strategy="none", subset_per_class=0, test_limit=0),
                      out, device=CPU, progress=False)


def test_resumed_buffer_is_byte_identical_and_shards_compose(tmp_path):
    """An interruption after epoch 2 of expert 1 (what kill -9 leaves: finished files + a partial) resumes
    to the same bytes as an uninterrupted run; two shards give the same files too."""
    kw = dict(num_experts=3, epochs=3, batch_size=6, dsa_strategy="color_crop_cutout_flip_scale_rotate",
              subset_per_class=0, test_limit=0, arch="mlp")
    train = make_toy(n_per_class=4, num_classes=3, size=6)
    cfg = ExpertConfig(**kw)
    full = tmp_path / "full"
    train_experts(train, None, cfg, full, device=CPU, progress=False)

    class Killed(Exception):
        pass

    def kill(index, epoch):
        if (index, epoch) == (1, 2):
            raise Killed

    cut = tmp_path / "cut"
    with pytest.raises(Killed):
        train_experts(train, None, cfg, cut, device=CPU, progress=False, on_epoch=kill)
    assert (cut / ".expert_0001.partial.pt").exists() and not (cut / "expert_0001.safetensors").exists()
    done = train_experts(train, None, cfg, cut, device=CPU, progress=False)
    assert done == [1, 2]
    assert not list(cut.glob(".*partial*"))
    shards = tmp_path / "shards"
    for i in (1, 0):
        train_experts(train, None, cfg, shards, device=CPU, progress=False, shard=(i, 2))
    for name in ["buffer.json"] + [f"expert_{e:04d}.safetensors" for e in range(3)]:
        assert (cut / name).read_bytes() == (full / name).read_bytes(), name
        assert (shards / name).read_bytes() == (full / name).read_bytes(), name
    assert train_experts(train, None, cfg, cut, device=CPU, progress=False) == []  # nothing left to do


def test_expert_records_and_cpu_preset(tmp_path):
    train, out, _ = tiny_experts(tmp_path)
    buf = load_buffer(out, train, arch="mlp", zca=False, need_epochs=4)
    rec = buf.record(0)
    assert len(rec["test_acc"]) == 4 and all(0 <= a <= 1 for a in rec["test_acc"])
    assert rec["train_loss"][-1] < rec["train_loss"][0]
    from ddkit.teachers.experts import resolve_expert_config

    eff = resolve_expert_config(ExpertConfig(preset="cpu"))
    assert eff["num_experts"] < 100 and eff["subset_per_class"] > 0 and eff["epochs"] >= 6
    assert resolve_expert_config(ExpertConfig())["num_experts"] == 100
    assert dataclasses.replace(ExpertConfig(), epochs=7).epochs == 7


def test_cifar10_ipc10_lr_img_typo_is_told_unless_chosen():
    # mtt-distillation issue #31: the author called the table's 1e5 a typo and gave no corrected value
    with pytest.warns(UserWarning, match="issue #31"):
        assert settings(MTTConfig(ipc=10), "cifar10")["lr_img"] == 1e5
    import warnings as w

    with w.catch_warnings():
        w.simplefilter("error")
        assert settings(MTTConfig(ipc=10, lr_img=1000.0), "cifar10")["lr_img"] == 1000.0
        settings(MTTConfig(ipc=1), "cifar10")
        settings(DATMConfig(ipc=10), "cifar10")


@pytest.mark.parametrize("method", ["mtt", "datm"])
def test_each_iteration_draws_its_minibatches_from_a_fresh_permutation(tmp_path, monkeypatch, method):
    # distill.py / DATM.py start every iteration with an empty chunk list (a fresh permutation of the set), so
    # a chunk left over from one unroll never opens the next (found by bench/parity/mtt_grad.py, batch_syn 4 of 10)
    from ddkit.methods import mtt as M
    from ddkit.methods import mtt_ops

    train, out, _ = tiny_experts(tmp_path)
    left: list = []
    nxt = mtt_ops.Batches.next

    def spy(self):
        left.append(len(self.chunks))
        return nxt(self)

    monkeypatch.setattr(mtt_ops.Batches, "next", spy)
    common = dict(ipc=2, buffer=str(out), model="mlp", iterations=2, syn_steps=1, expert_epochs=1,
                  max_start_epoch=2, batch_syn=3, zca=False, lr_img=1.0, lr_lr=1e-7, init="real",
                  dsa_strategy="none")
    if method == "mtt":
        cfg = MTTConfig(**common)
    else:
        cfg = DATMConfig(**common, lr_y=1.0, threshold=1e9, min_start_epoch=0, current_max_start_epoch=2,
                         expansion_end_epoch=10, sequential_generation=False)
    list(getattr(M, method)(train, None, cfg, range(4), device=CPU, progress=False))
    assert left == [0, 0, 0]  # 8 images in chunks of 3, 3, 2: one step per iteration, each from a new permutation
