"""Registry, config, distilled-set format, method registry and the random baseline."""
from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
import torch

from ddkit.config import add_dataclass_args, dump, field, from_args
from ddkit.distilled import DistilledSet, load_distilled
from ddkit.methods import create_method, list_methods
from ddkit.registry import Registry, UnknownNameError
from ddkit.utils import DDKitError, atomic_dir, derive_seed
from tests.conftest import make_toy


def test_registry_aliases_and_unknown():
    r: Registry[int] = Registry("thing")
    r.register("ConvNet-3", aliases=("conv3",), obj=3)
    assert r.get("convnet_3") == 3 and r.get("CONV3") == 3
    assert r.resolve("conv3") == "ConvNet-3"
    with pytest.raises(UnknownNameError) as e:
        r.get("convnet-9")
    assert "Known: ConvNet-3" in str(e.value)
    with pytest.raises(ValueError):
        r.register("conv3", obj=4)


@dataclasses.dataclass(frozen=True)
class _Cfg:
    ipc: int = field(10, "images per class")
    lr: float = field(0.01, "step size")
    amp: bool = field(True, "bf16 on cuda")
    name: str = field("x", "a name")


def test_config_flags_yaml_defaults_and_override():
    p = argparse.ArgumentParser()
    add_dataclass_args(p, _Cfg)
    ns = p.parse_args(["--ipc", "50", "--amp", "false"])
    cfg = from_args(_Cfg, ns, base={"lr": 0.5})
    assert cfg == _Cfg(ipc=50, lr=0.5, amp=False, name="x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.ipc = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match="unknown _Cfg keys"):
        from_args(_Cfg, ns, base={"nope": 1})
    assert "ipc: 50" in dump(cfg)


def test_derive_seed_is_stable_and_distinct():
    assert derive_seed(0, "class", 1) == derive_seed(0, "class", 1)
    assert derive_seed(0, "class", 1) != derive_seed(0, "class", 2)
    assert derive_seed(0, "class", 1) != derive_seed(1, "class", 1)


def test_random_method_balanced_seeded_and_real():
    ds = make_toy(n_per_class=20)
    a = create_method("random", ipc=5, seed=3)(ds, progress=False)
    b = create_method("rand", ipc=5, seed=3)(ds, progress=False)
    c = create_method("random", ipc=5, seed=4)(ds, progress=False)
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)
    assert torch.bincount(a.labels).tolist() == [5, 5, 5, 5]
    idx = torch.tensor(a.meta["source_indices"])
    assert len(set(idx.tolist())) == len(idx)  # no duplicates
    assert torch.equal(a.images, ds.images[idx].float() / 255)
    assert torch.equal(ds.labels[idx], a.labels)
    assert a.meta["method"] == "random" and a.meta["ipc"] == 5


def test_random_per_class_result_independent_of_other_classes():
    ds = make_toy(n_per_class=20, num_classes=4)
    full = create_method("random", ipc=3, seed=0)(ds, progress=False)
    # Drop class 3: classes 0..2 must get exactly the same images.
    keep = ds.labels < 3
    sub = ds.subset(torch.nonzero(keep).flatten())
    sub.classes = ds.classes[:3]
    part = create_method("random", ipc=3, seed=0)(sub, progress=False)
    assert torch.equal(full.images[:9], part.images)


def test_ipc_larger_than_class_is_refused():
    ds = make_toy(n_per_class=4)
    with pytest.raises(DDKitError, match="class 0 .* has only 4"):
        create_method("random", ipc=5)(ds, progress=False)


def test_unknown_method_and_option():
    with pytest.raises(UnknownNameError, match="Known: .*random"):
        create_method("no-such-method")
    with pytest.raises(DDKitError, match="no option"):
        create_method("random", iters=3)
    assert "random" in list_methods()


def test_distilled_roundtrip_exact(tmp_path):
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(6, 3, 8, 8, generator=g) * 1.2 - 0.1  # optimised sets may leave [0, 1]
    d = DistilledSet(imgs, torch.tensor([0, 0, 1, 1, 2, 2]), ["a", "b", "c/d"], [0.5] * 3, [0.2] * 3,
                     soft={"soft": torch.randn(6, 3), "region_soft": torch.randn(6, 4, 3)},
                     meta={"method": "test", "seed": 1})
    out = d.save(tmp_path / "set")
    e = load_distilled(out)
    assert torch.equal(e.images, d.images) and torch.equal(e.labels, d.labels)
    assert torch.equal(e.soft["soft"], d.soft["soft"]) and torch.equal(e.soft["region_soft"], d.soft["region_soft"])
    assert e.classes == ["a", "b", "c/d"] and e.meta["method"] == "test"
    assert (out / "grid.png").is_file()
    pngs = sorted((out / "images").rglob("*.png"))
    assert len(pngs) == 6 and (out / "images" / "002_c_d").is_dir()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["ipc"] == 2 and meta["num_images"] == 6 and "git_revision" in meta


def test_distilled_save_refuses_existing_and_is_atomic(tmp_path):
    d = DistilledSet(torch.rand(2, 1, 4, 4), torch.tensor([0, 1]), ["a", "b"], [0.5], [0.2])
    out = d.save(tmp_path / "set")
    before = (out / "images.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        d.save(out)
    # A failure while writing leaves the old output untouched and no temp folder behind.
    with pytest.raises(RuntimeError):
        with atomic_dir(out, overwrite=True) as tmp:
            (tmp / "x").write_text("partial")
            raise RuntimeError("boom")
    assert (out / "images.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["set"]
    d2 = DistilledSet(torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]), ["a", "b"], [0.5], [0.2])
    d2.save(out, overwrite=True)
    assert torch.equal(load_distilled(out).images, d2.images)


def test_load_rejects_non_set(tmp_path):
    with pytest.raises(DDKitError, match="not a ddkit distilled set"):
        load_distilled(tmp_path)
