"""Unit checks of the validation layer: outputs vs inputs, teacher sanity against its own record,
divergence while training a teacher, grey image folders, strict JSON, umask modes."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddkit.data import create_dataset
from ddkit.distilled import DistilledSet
from ddkit.teachers import TeacherConfig, check_teacher, train_teacher
from ddkit.teachers.train import _divergence, default_lr
from ddkit.utils import DDKitError
from ddkit.safe_paths import Declared, check_declared
from ddkit.validate import json_safe


def check_outputs(outputs, inputs):
    check_declared([Declared(str(o), "output") for o in outputs if o], [Declared(str(i), "the set") for i in inputs if i])


def test_outputs_that_touch_inputs_are_refused(tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    for out, how in ((a, "is the input"), (a / "b", "is inside the input"), (tmp_path, "contains the input"),
                     (tmp_path / "x" / ".." / "a", "is the input")):
        with pytest.raises(DDKitError, match=how):
            check_outputs([out], [a])
    (tmp_path / "link").symlink_to(a)
    with pytest.raises(DDKitError, match="is the input"):
        check_outputs([tmp_path / "link"], [a])
    check_outputs([tmp_path / "a2", None], [a, None])  # a sibling with a common prefix is fine


def test_json_safe_writes_null_and_says_why():
    out = json_safe({"std": float("nan"), "acc": [0.5, float("inf")]})
    assert out["std"] is None and out["acc"] == [0.5, None] and "null" in out["nulls"]
    json.dumps(out, allow_nan=False)
    assert "nulls" not in json_safe({"a": 1.0})


@pytest.fixture(scope="module")
def digits():
    return create_dataset("digits", split="train", progress=False), create_dataset("digits", split="test",
                                                                                    progress=False)


@pytest.fixture(scope="module")
def good_teacher(digits):
    train, test = digits
    t, m = train_teacher(train, test, TeacherConfig(arch="convnet-d1-bn", arch_kw={"width": 16}, epochs=8,
                                                    batch_size=64, seed=0), device="cpu", progress=False)
    assert m["test_acc"] > 0.9
    return t


def test_check_teacher_compares_with_the_recorded_accuracy(good_teacher, digits):
    _, test = digits
    assert check_teacher(good_teacher, test) > 0.9
    import copy

    t = copy.deepcopy(good_teacher)
    t.mean, t.std = (0.6,), (0.1,)  # a json with the wrong normalisation (BatchNorm does not undo it)
    with pytest.raises(DDKitError, match="its json records"):
        check_teacher(t, test)


def test_check_teacher_flags_swapped_classes(good_teacher, digits):
    import copy

    _, test = digits
    t = copy.deepcopy(good_teacher)
    t.meta["accuracy"] = None  # only the per-class rule can see it
    w, b = t.model.classifier.weight.data, t.model.classifier.bias.data
    w[[3, 5]], b[[3, 5]] = w[[5, 3]].clone(), b[[5, 3]].clone()
    with pytest.raises(DDKitError, match=r"predicted as each other \('3'→'5' .*'5'→'3' .*swapped"):
        check_teacher(t, test)
    w[[3, 5]], b[[3, 5]] = w[[5, 3]].clone(), b[[5, 3]].clone()
    w[4], b[4] = -10.0, -10.0  # class 4 never predicted: weak, not swapped -> a warning only
    with pytest.warns(UserWarning, match=r"class\(es\) '4' 0% far below"):
        check_teacher(t, test)


def test_divergence_rule():
    assert _divergence(2.0, 0, 10, 0.2) is None
    assert _divergence(9.0, 0, 10, 0.2) is None  # the first epoch may still be settling
    assert "diverged at lr 0.2" in _divergence(5.8, 3, 10, 0.2)  # issue 14: digits at 0.2 reached loss 5.8
    assert "--lr 0.05" in _divergence(float("nan"), 0, 10, 0.2)
    assert default_lr("resnet18_modified") == 0.2 and default_lr("convnet-d3-bn") == 0.05
    assert default_lr("vgg11") == 0.1


def test_teacher_training_that_diverges_says_so_with_its_lr(digits):
    train, test = digits
    with pytest.raises(DDKitError, match=r"diverged at lr 1000: .*--lr 250"):
        train_teacher(train, test, TeacherConfig(arch="convnet-d1", arch_kw={"width": 8}, epochs=3, lr=1000.0,
                                                 batch_size=128), device="cpu", progress=False)


def _grey_folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("a", "b"):
            d = root / split / c
            d.mkdir(parents=True)
            for k in range(3):
                Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8), mode="L").save(d / f"{k}.png")


def test_grey_image_folder_stays_one_channel(tmp_path):
    _grey_folder(tmp_path / "g")
    ds = create_dataset(f"folder:{tmp_path / 'g'}", cache_dir=tmp_path / "cache", progress=False)
    te = create_dataset(f"folder:{tmp_path / 'g'}", split="test", cache_dir=tmp_path / "cache", progress=False)
    assert ds.channels == 1 and te.channels == 1 and len(ds.mean) == 1 and len(te.std) == 1
    raw = np.array(Image.open(tmp_path / "g" / "train" / "a" / "0.png"))
    assert np.array_equal(ds.images[0, 0].numpy(), raw)
    # A colour image among grey ones keeps the set RGB (ImageNet holds a few grey JPEGs).
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8) + np.array([255, 0, 0], dtype=np.uint8)).save(
        tmp_path / "g" / "train" / "b" / "9.png")
    assert create_dataset(f"folder:{tmp_path / 'g'}", cache_dir=tmp_path / "cache2", progress=False).channels == 3


def test_test_split_missing_a_class_is_refused(tmp_path):
    _grey_folder(tmp_path / "g")
    for f in (tmp_path / "g" / "val" / "b").iterdir():
        f.unlink()
    (tmp_path / "g" / "val" / "b").rmdir()
    with pytest.raises(DDKitError, match="lacks class folder"):
        create_dataset(f"folder:{tmp_path / 'g'}", split="test", cache_dir=tmp_path / "c", progress=False)


def test_outputs_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        DistilledSet(torch.rand(2, 1, 4, 4), torch.tensor([0, 1]), ["a", "b"], [0.5], [0.25]).save(tmp_path / "s")
    finally:
        os.umask(old)
    assert (tmp_path / "s").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "s" / "images.safetensors").stat().st_mode & 0o777 == 0o644


def test_summary_after_save_names_the_version(tmp_path):
    s = DistilledSet(torch.rand(2, 1, 4, 4), torch.tensor([0, 1]), ["a", "b"], [0.5], [0.25])
    s.save(tmp_path / "s", pngs=False)
    assert "? @ ?" not in s.summary() and "created by  ddkit " in s.summary()


def test_a_safetensors_header_of_1408_bytes_is_not_taken_for_a_pickle(tmp_path):
    # A header length of 0x0580 is stored as 80 05 00 …, pickle protocol 5's first two bytes: a real teacher
    # (ConvNet-D2-BN at 32 px) hit it. A header length followed by "{" is safetensors.
    import json
    import struct

    from ddkit.validate import read_safetensors

    head = json.dumps({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode().ljust(0x580)
    p = tmp_path / "t.safetensors"
    p.write_bytes(struct.pack("<Q", len(head)) + head + struct.pack("<f", 1.5))
    assert p.read_bytes()[:2] == b"\x80\x05"
    assert read_safetensors(p)["x"].tolist() == [1.5]
    (tmp_path / "real.safetensors").write_bytes(b"\x80\x05" + b"\x95" * 20)  # a pickle is still refused
    with pytest.raises(DDKitError, match="pickle"):
        read_safetensors(tmp_path / "real.safetensors")
