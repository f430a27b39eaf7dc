"""The working space of the matching family: official statistics by default, the dataset's own on request."""
from __future__ import annotations

import json

import pytest
import torch

from ddkit.data.base import ImageDataset
from ddkit.data.facts import CLASS_NAMES, FACTS, OFFICIAL_STATS, official_name, working_stats
from ddkit.methods import create_method
from ddkit.methods.matching_ops import working_space
from ddkit.teachers.experts import ExpertConfig, load_buffer, train_experts
from ddkit.utils import DDKitError
from tests.conftest import make_toy

CPU = torch.device("cpu")


def like(name: str, classes, size: int = 8, n: int = 2) -> ImageDataset:
    """Random uint8 images carrying a named set's identity (name, classes) and true statistics."""
    k = len(classes)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n * k, 3, size, size), generator=g, dtype=torch.uint8)
    info = FACTS.get(name)
    mean, std = (info.mean, info.std) if info else ((0.5,) * 3, (0.25,) * 3)
    return ImageDataset(images, torch.arange(k).repeat_interleave(n), classes, mean, std, name=name)


def test_official_statistics_scale_the_working_space_by_the_expected_ratio():
    ds = like("cifar10", CLASS_NAMES["cifar10"])
    off, ws = working_space(ds, "dc", "official", CPU)
    true, wt = working_space(ds, "dc", "true", CPU)
    assert ws.kind == "official" and ws.std == (0.2023, 0.1994, 0.2010) and "utils.py:50-51" in ws.source
    assert wt.kind == "true" and wt.std == FACTS["cifar10"].std
    x = torch.rand(2, 3, 4, 4)
    ratio = torch.tensor(FACTS["cifar10"].std) / torch.tensor((0.2023, 0.1994, 0.2010))
    # same mean, so (x − m)/s_off = (x − m)/s_true · s_true/s_off: larger in the official space
    assert torch.allclose(off.encode(x), true.encode(x) * ratio.view(1, 3, 1, 1), atol=1e-5)
    assert torch.allclose(ratio, torch.tensor([1.221, 1.221, 1.3015]), atol=1e-3)  # R, G ~1.22×; B 1.30×
    assert torch.allclose(off.decode(off.encode(x)), x, atol=1e-6)


def test_dm_noise_init_lives_in_the_official_space_and_the_set_stores_pixels_and_dataset_stats():
    ds = like("cifar10", CLASS_NAMES["cifar10"], n=2)
    kw = dict(ipc=2, model="mlp", init="noise", iterations=0, batch_real=2, lr_img=0.0, dsa_strategy="none")
    off = create_method("dm", **kw)(ds, None, device=CPU, progress=False, classes=[0])
    true = create_method("dm", **kw, norm="true")(ds, None, device=CPU, progress=False, classes=[0])
    # lr 0: the set is the N(0,1) draw decoded with each space's std (same seed, same draw)
    dev_off = (off.images - torch.tensor(ds.mean).view(1, 3, 1, 1))
    dev_true = (true.images - torch.tensor(ds.mean).view(1, 3, 1, 1))
    expect = torch.tensor((0.2023, 0.1994, 0.2010)) / torch.tensor(ds.std)
    assert torch.allclose(dev_off, dev_true * expect.view(1, 3, 1, 1), atol=1e-5)
    assert tuple(off.mean) == ds.mean and tuple(off.std) == ds.std  # the evaluator normalises with these
    assert off.meta["working_stats"]["norm"] == "official" and true.meta["working_stats"]["norm"] == "true"


def test_copies_of_named_sets_are_recognised_and_unknown_sets_keep_their_own_statistics():
    c10 = like("tar:/x/cifar10.tar.gz", CLASS_NAMES["cifar10"], size=32, n=1)
    assert official_name(c10) == "cifar10" and working_stats(c10, "mtt").std == (0.2023, 0.1994, 0.2010)
    c100 = like("folder:/c100", ["apple", "aquarium_fish", "baby", "bear", "beaver"] + [f"c{i}" for i in range(95)],
                size=32, n=1)
    assert official_name(c100) == "cifar100"
    assert working_stats(c100, "mtt").std == (0.2023, 0.1994, 0.2010)  # MTT reuses CIFAR-10's for CIFAR-100
    assert working_stats(c100, "dc").std == (0.2673, 0.2564, 0.2762)    # DC has its own
    tiny = like("folder:/tiny", [f"n{i:08d}" for i in range(200)], size=64, n=1)
    assert official_name(tiny) == "tiny-imagenet" and working_stats(tiny, "sre2l").std == (0.2302, 0.2265, 0.2262)
    toy = make_toy(n_per_class=1)
    assert official_name(toy) is None
    ws = working_stats(toy, "dc")
    assert ws.kind == "true" and ws.std == toy.std and "no statistics" in ws.source
    assert set(OFFICIAL_STATS) == {"dc", "mtt", "sre2l", "dwa", "gvbsm", "edc"}
    assert working_stats(c10, "gvbsm").std == (0.2675, 0.2565, 0.2761)  # G-VBSM: CIFAR-100's numbers on CIFAR-10
    with pytest.raises(DDKitError, match="unknown norm 'raw'"):
        working_stats(toy, "dc", "raw")


def test_expert_buffer_records_its_working_statistics_and_the_distillation_must_match(tmp_path):
    ds = like("cifar10", CLASS_NAMES["cifar10"], n=2)
    opts = dict(arch="mlp", num_experts=1, epochs=2, batch_size=20, dsa_strategy="none", subset_per_class=0,
                test_limit=0)
    train_experts(ds, None, ExpertConfig(**opts), tmp_path / "off", device=CPU, progress=False)
    head = json.loads((tmp_path / "off" / "buffer.json").read_text())
    assert head["normalisation"]["std"] == [0.2023, 0.1994, 0.2010] and head["config"]["norm"] == "official"
    assert load_buffer(tmp_path / "off", ds, arch="mlp", zca=False, need_epochs=2).space.std == (0.2023, 0.1994,
                                                                                                  0.2010)
    with pytest.raises(DDKitError, match="uses the true statistics.*pass --norm official"):
        load_buffer(tmp_path / "off", ds, arch="mlp", zca=False, need_epochs=2, norm="true")


def test_a_buffer_made_before_the_norm_and_sam_options_still_resumes_with_their_old_values(tmp_path):
    ds = make_toy(n_per_class=4, num_classes=3, size=6)
    opts = dict(arch="mlp", num_experts=2, epochs=2, batch_size=12, dsa_strategy="none", subset_per_class=0,
                test_limit=0)
    out = tmp_path / "old"
    train_experts(ds, None, ExpertConfig(**opts, norm="true"), out, device=CPU, progress=False,
                  shard=(0, 2))
    head = json.loads((out / "buffer.json").read_text())
    for k in ("norm", "sam", "rho", "alpha", "adaptive"):
        head["config"].pop(k)  # what an older ddkit wrote
    (out / "buffer.json").write_text(json.dumps(head))
    assert train_experts(ds, None, ExpertConfig(**opts, norm="true"), out, device=CPU, progress=False) == [1]
    with pytest.raises(DDKitError, match="other settings"):  # SAM would change the experts: refused
        train_experts(ds, None, ExpertConfig(**opts, norm="true", sam=True), out, device=CPU,
                      progress=False)
