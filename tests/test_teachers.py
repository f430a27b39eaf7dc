"""Teachers: training beats chance, every checkpoint layout loads exactly, mismatches are refused."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from ddkit.data.base import ImageDataset, to_float
from ddkit.models import create_model
from ddkit.teachers import (Teacher, TeacherConfig, accuracy, check_teacher, load_teacher, predict_logits,
                            random_flip_translate, save_teacher, train_teacher)
from ddkit.utils import DDKitError

SIZE, CLASSES = 16, ["hstripes", "vstripes", "checker", "blob"]
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _patterns(n_per: int, seed: int, name: str = "toy", split: str = "train") -> ImageDataset:
    """4 classes told apart by pattern (not colour): stripes ─/│, checkerboard, centred blob."""
    g = torch.Generator().manual_seed(seed)
    r = torch.arange(SIZE)
    masks = torch.stack([
        ((r // 2) % 2).view(-1, 1).expand(SIZE, SIZE),
        ((r // 2) % 2).view(1, -1).expand(SIZE, SIZE),
        (((r // 4).view(-1, 1) + (r // 4).view(1, -1)) % 2),
        ((r - SIZE / 2).abs().view(-1, 1).lt(4) & (r - SIZE / 2).abs().view(1, -1).lt(4)).long(),
    ]).float()
    labels = torch.arange(len(CLASSES)).repeat_interleave(n_per)
    colour = torch.rand(len(labels), 3, 1, 1, generator=g) * 150 + 80  # random colour: not a shortcut
    x = masks[labels].unsqueeze(1) * colour + torch.randn(len(labels), 3, SIZE, SIZE, generator=g) * 30 + 20
    return ImageDataset(x.clamp(0, 255).to(torch.uint8), labels, CLASSES, MEAN, STD, name=name, split=split)


CFG = TeacherConfig(arch="convnet-d2", arch_kw={"width": 16}, epochs=4, batch_size=32, lr=0.05, seed=0)


@pytest.fixture(scope="module")
def data():
    return _patterns(64, 0), _patterns(32, 1, split="test")


@pytest.fixture(scope="module")
def trained(data):
    train, test = data
    return train_teacher(train, test, CFG, "cpu", progress=False)


def test_training_beats_chance(trained) -> None:
    teacher, metrics = trained
    assert metrics["test_acc"] >= 0.8  # chance is 0.25
    assert metrics["epochs"] == 4 and metrics["images_per_s"] > 0 and metrics["train_seconds"] > 0
    assert teacher.arch == "convnet-d2" and teacher.classes == CLASSES and teacher.mean == MEAN
    assert not teacher.model.training and not any(p.requires_grad for p in teacher.model.parameters())


def test_training_is_seeded(data) -> None:
    train, _ = data
    cfg = dataclasses.replace(CFG, epochs=1)
    a, _ = train_teacher(train, None, cfg, "cpu", progress=False)
    b, _ = train_teacher(train, None, cfg, "cpu", progress=False)
    x = train.images[:8]
    assert torch.equal(a(x), b(x))


def test_cpu_amp_runs_bf16_only_where_native(data, monkeypatch) -> None:
    """--cpu-amp trains under bf16 autocast where the CPU has bf16 (different weights from fp32), and is
    exactly the fp32 run where it has not (the flag falls back, it never emulates)."""
    import ddkit.utils as utils
    train, _ = data
    cfg = dataclasses.replace(CFG, epochs=1)
    x = train.images[:8]
    fp32 = train_teacher(train, None, cfg, "cpu", progress=False)[0](x)
    monkeypatch.setattr(utils, "_CPU_BF16", False)
    assert torch.equal(train_teacher(train, None, dataclasses.replace(cfg, cpu_amp=True), "cpu", progress=False)[0](x),
                       fp32)
    monkeypatch.setattr(utils, "_CPU_BF16", None)
    if utils.cpu_bf16_native():
        bf16 = train_teacher(train, None, dataclasses.replace(cfg, cpu_amp=True), "cpu", progress=False)[0](x)
        assert not torch.equal(bf16, fp32) and torch.allclose(bf16.softmax(1), fp32.softmax(1), atol=0.2)


def test_compile_trains_the_same_network(data, tmp_path: Path) -> None:
    """--compile trains the same weights as eager (fp32: up to fused-kernel rounding), leaves the model a plain
    NCHW module, and saves/loads without torch.compile's `_orig_mod.` prefix."""
    train, test = data
    cfg = dataclasses.replace(CFG, epochs=1)
    eager, _ = train_teacher(train, None, cfg, "cpu", progress=False)
    comp, _ = train_teacher(train, None, dataclasses.replace(cfg, compile=True), "cpu", progress=False)
    assert type(comp.model) is type(eager.model) and not hasattr(comp.model, "_orig_mod")
    x = test.images
    assert torch.allclose(comp(x).softmax(1), eager(x).softmax(1), atol=2e-3)
    assert comp(x).argmax(1).eq(eager(x).argmax(1)).float().mean() >= 0.95
    w, _ = save_teacher(comp, tmp_path / "compiled")
    assert torch.equal(load_teacher(w, dataset=test)(x), comp(x))


class _Killed(Exception):
    pass


def test_checkpoint_resumes_to_the_uninterrupted_weights(data, tmp_path: Path, monkeypatch) -> None:
    """A run killed after epoch 2 of 3 and restarted with the same checkpoint ends with the weights, test history
    and epoch log of a run that never stopped; another recipe's checkpoint is refused."""
    import ddkit.teachers.train as tt
    train, test = data
    cfg = dataclasses.replace(CFG, epochs=3, eval_every=1)
    ref, ref_m = train_teacher(train, test, cfg, "cpu", progress=False)
    ckpt, log = tmp_path / "t.ckpt", tmp_path / "t.metrics.jsonl"
    real = tt._log_epoch

    def kill_after_two(run, rec, total, fh):
        real(run, rec, total, fh)
        if rec["epoch"] == 2:
            raise _Killed

    monkeypatch.setattr(tt, "_log_epoch", kill_after_two)
    with pytest.raises(_Killed):
        train_teacher(train, test, cfg, "cpu", progress=False, log_path=log, checkpoint=ckpt)
    monkeypatch.setattr(tt, "_log_epoch", real)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2
    with pytest.raises(DDKitError, match="lr"):
        train_teacher(train, test, dataclasses.replace(cfg, lr=0.1), "cpu", progress=False, checkpoint=ckpt)
    with pytest.raises(DDKitError, match="other data"):
        train_teacher(_patterns(48, 0), test, cfg, "cpu", progress=False, checkpoint=ckpt)
    # A checkpoint started on CUDA (a 16-byte Philox generator state) cannot go on on the CPU: one line, not a
    # RuntimeError from set_state; an old checkpoint without gen_device is told apart by its state's size.
    state = torch.load(ckpt, weights_only=True)
    assert state["gen_device"] == "cpu"
    for tag, extra in (("on cuda", {"gen_device": "cuda"}), ("on another device", {})):
        other = {k: v for k, v in state.items() if k != "gen_device"}
        torch.save({**other, "gen": torch.zeros(16, dtype=torch.uint8), **extra}, tmp_path / "gpu.ckpt")
        with pytest.raises(DDKitError, match=f"started {tag} and cannot go on on cpu") as e:
            train_teacher(train, test, cfg, "cpu", progress=False, checkpoint=tmp_path / "gpu.ckpt")
        assert "\n" not in str(e.value) and "--device" in str(e.value)
    got, got_m = train_teacher(train, test, cfg, "cpu", progress=False, log_path=log, checkpoint=ckpt)
    assert torch.equal(got(test.images), ref(test.images))
    assert got_m["history"] == ref_m["history"] and len(got_m["history"]) == 3
    assert [json.loads(x)["epoch"] for x in log.read_text().splitlines()] == [1, 2, 3]


def test_flip_translate_matches_per_sample_reference() -> None:
    x = torch.randint(0, 255, (16, 2, 5, 7), dtype=torch.uint8)
    g = torch.Generator().manual_seed(1)
    out = random_flip_translate(x, 2, True, g)
    g = torch.Generator().manual_seed(1)  # redraw the same parameters to build the reference by hand
    flips = torch.rand(16, generator=g) < 0.5
    dy, dx = torch.randint(0, 5, (16,), generator=g), torch.randint(0, 5, (16,), generator=g)
    for i in range(16):
        xi = x[i].flip(2) if flips[i] else x[i]
        padded = torch.nn.functional.pad(xi, (2, 2, 2, 2))
        assert torch.equal(out[i], padded[:, dy[i]:dy[i] + 5, dx[i]:dx[i] + 7])
    assert out.dtype == torch.uint8 and 0 < int(flips.sum()) < 16 and len(set(dy.tolist())) > 1


def test_teacher_api(trained) -> None:
    teacher, _ = trained
    x = _patterns(2, 5).images
    assert torch.allclose(teacher(x), teacher(to_float(x)))  # uint8 and [0,1] inputs agree
    assert teacher.features(x, "block1").shape == (8, 16, 8, 8)
    pen = teacher.features(x, "penultimate")
    assert torch.allclose(teacher.model.classifier(pen), teacher(x), atol=1e-5)
    x01 = to_float(x).requires_grad_(True)
    teacher.logits(x01, grad=True).sum().backward()
    assert x01.grad is not None and x01.grad.abs().sum() > 0
    assert teacher.num_classes == 4 and teacher.to("cpu") is teacher


def test_predict_logits_and_accuracy(trained, data) -> None:
    teacher, metrics = trained
    _, test = data
    z = predict_logits(teacher, test.images, batch_size=7)
    z2 = predict_logits(teacher.model, to_float(test.images), MEAN, STD, "cpu", batch_size=64)
    assert z.shape == (len(test), 4) and torch.allclose(z, z2, atol=1e-5)
    assert accuracy(teacher, test) == pytest.approx((z.argmax(1) == test.labels).float().mean().item())
    assert accuracy(teacher.model, test, batch_size=5) == pytest.approx(metrics["test_acc"])


def test_save_load_round_trip(trained, data, tmp_path: Path) -> None:
    teacher, _ = trained
    _, test = data
    w, j = save_teacher(teacher, tmp_path / "toy_teacher")
    meta = json.loads(j.read_text())
    assert w.name == "toy_teacher.safetensors" and meta["arch"] == "convnet-d2" and meta["classes"] == CLASSES
    assert meta["arch_kw"] == {"width": 16} and meta["recipe"]["epochs"] == 4 and "ddkit_revision" in meta
    for path in (tmp_path / "toy_teacher", w, j):
        loaded = load_teacher(path, dataset=test)
        assert torch.equal(loaded(test.images), teacher(test.images))
    bare = load_teacher(tmp_path / "toy_teacher")  # no dataset: everything comes from the json
    assert bare.classes == CLASSES and bare.mean == MEAN and bare.image_size == SIZE


def _peer_state(arch: str, seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(arch, 4, SIZE, **kw).eval()


def _same(t: Teacher, model: torch.nn.Module, test: ImageDataset) -> None:
    x = test.images[::8]  # 16 images, all classes: enough to tell different weights apart
    ref = predict_logits(model, x, MEAN, STD, "cpu")
    assert torch.allclose(t(x), ref, atol=1e-5)


def test_cim_layout(data, tmp_path: Path) -> None:
    _, test = data
    conv = _peer_state("conv1_bn", width=16)
    torch.save({"model": conv.state_dict(), "epoch": 3}, tmp_path / "toy_conv1.pth")
    t = load_teacher(tmp_path / "toy_conv1.pth", dataset=test)
    assert t.arch == "convnet-d1-bn" and t.arch_kw["norm"] == "batchnorm" and t.meta["layout"] == "cim"
    _same(t, conv, test)
    # RDED/CIM's own ConvNet keeps the layers in a ModuleDict: layers.conv.<d>, layers.norm.<d>.
    conv2 = _peer_state("conv2_bn", width=16)
    rded = {re.sub(r"features\.block(\d)\.([01])\.", lambda m: f"layers.{('conv', 'norm')[int(m.group(2))]}."
                   f"{int(m.group(1)) - 1}.", k): v for k, v in conv2.state_dict().items()}
    assert "layers.norm.1.running_mean" in rded
    torch.save({"model": rded}, tmp_path / "toy_conv2.pth")
    t = load_teacher(tmp_path / "toy_conv2.pth", dataset=test)
    assert t.arch == "convnet-d2-bn" and t.arch_kw == {"width": 16, "norm": "batchnorm"}
    _same(t, conv2, test)
    res = _peer_state("resnet18_modified")
    torch.save({"model": res.state_dict()}, tmp_path / "toy_resnet18_modified.pth")
    t = load_teacher(tmp_path / "toy_resnet18_modified.pth", dataset=test)
    assert t.arch == "resnet18_modified"
    _same(t, res, test)


def test_sre2l_layout(data, tmp_path: Path) -> None:
    _, test = data
    res = _peer_state("resnet18_modified", seed=1)
    sd = {"module." + k: v for k, v in res.state_dict().items()}
    torch.save({"state_dict": sd, "optimizer": {"lr": torch.tensor(0.1)}}, tmp_path / "checkpoint.pth.tar")
    t = load_teacher(tmp_path / "checkpoint.pth.tar", arch="resnet18_modified", dataset=test)
    _same(t, res, test)
    torch.save(sd, tmp_path / "plain_dp.pth")  # DataParallel prefixes without the wrapper dict
    _same(load_teacher(tmp_path / "plain_dp.pth", arch="resnet18_modified", dataset=test), res, test)


def test_ddranking_layout(data, tmp_path: Path) -> None:
    _, test = data
    conv = _peer_state("ConvNet-1", width=16)  # instance norm, as DD-Ranking's ConvNet-1
    folder = tmp_path / "toy" / "ConvNet-1"
    folder.mkdir(parents=True)
    # DD-Ranking's ConvNet is a flat Sequential: features.0 = conv, features.1 = norm.
    flat = {k.replace("features.block1.", "features."): v for k, v in conv.state_dict().items()}
    torch.save(flat, folder / "ckpt_best.pt")
    t = load_teacher(folder / "ckpt_best.pt", dataset=test)
    assert t.arch == "convnet-d1" and t.arch_kw == {"width": 16, "norm": "instancenorm"}
    _same(t, conv, test)
    # Without a dataset the input size comes from the classifier and mean/std from the arguments.
    t = load_teacher(folder, mean=MEAN, std=STD)  # the model folder itself is accepted too
    assert t.image_size == SIZE and t.num_classes == 4
    _same(t, conv, test)


def test_mismatches_are_refused(trained, data, tmp_path: Path) -> None:
    teacher, _ = trained
    _, test = data
    save_teacher(teacher, tmp_path / "t")
    three = test.subset(torch.nonzero(test.labels < 3).flatten())
    three = ImageDataset(three.images, three.labels, CLASSES[:3], MEAN, STD, name="toy3")
    with pytest.raises(DDKitError, match="checkpoint has 4 outputs but toy3 has 3 classes"):
        load_teacher(tmp_path / "t", dataset=three)
    renamed = ImageDataset(test.images, test.labels, CLASSES[::-1], MEAN, STD, name="toy")
    with pytest.raises(DDKitError, match="classes in another order"):
        load_teacher(tmp_path / "t", dataset=renamed)
    with pytest.raises(DDKitError, match="does not fit arch 'convnet-d3'.*--teacher-arch"):
        load_teacher(tmp_path / "t", arch="convnet-d3", dataset=test)
    with pytest.raises(DDKitError, match="unknown model 'nope'"):
        load_teacher(tmp_path / "t", arch="nope", dataset=test)
    torch.save(teacher.model.state_dict(), tmp_path / "mystery.pth")
    with pytest.raises(DDKitError, match="cannot tell the architecture.*--teacher-arch"):
        load_teacher(tmp_path / "mystery.pth", dataset=test)
    torch.save({"model": teacher.model.state_dict(), "args": Path("x")}, tmp_path / "toy_conv2.pth")
    with pytest.raises(DDKitError, match="refuses to unpickle"):
        load_teacher(tmp_path / "toy_conv2.pth", dataset=test)
    with pytest.raises(FileNotFoundError):
        load_teacher(tmp_path / "absent.pth")


def test_torchvision_teacher_needs_cached_weights(tmp_path: Path) -> None:
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))  # an empty hub cache: nothing may be downloaded
    try:
        with pytest.raises(DDKitError, match="not cached"):
            load_teacher("torchvision:resnet18")
    finally:
        torch.hub.set_dir(old)


def test_check_teacher(trained, data) -> None:
    teacher, metrics = trained
    _, test = data
    assert check_teacher(teacher, test, n=100) >= 0.8
    # Swap classifier rows as a checkpoint with another class order would: accuracy drops below chance.
    perm = torch.tensor([1, 2, 3, 0])
    model = create_model("convnet-d2", 4, SIZE, width=16)
    model.load_state_dict(teacher.model.state_dict())
    with torch.no_grad():
        model.classifier.weight.copy_(model.classifier.weight[perm])
        model.classifier.bias.copy_(model.classifier.bias[perm])
    permuted = Teacher(model, "convnet-d2", CLASSES, MEAN, STD, SIZE, 3)
    with pytest.raises(DDKitError, match="class-order mismatch"):
        check_teacher(permuted, test, n=100)
