"""Class sharding, per-class parts, merge, and a real 2-process gloo run equal to one process, bit for bit."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from ddkit.data.base import ImageDataset, to_float
from ddkit.distilled import DistilledSet
from ddkit.ranks import dist_env
from ddkit.distributed import (distill_parts, distill_sharded, merge_parts, parse_shard, part_path,
                               parts_dir_for, read_header, run_fingerprint, scan_parts, shard_classes)
from ddkit.methods.base import METHODS, ClassResult, MethodConfig, create_method, register_method
from ddkit.models import create_model
from ddkit.teachers import Teacher
from ddkit.utils import DDKitError

ROOT = Path(__file__).resolve().parents[1]
LIC_KW = {"ipc": 1, "iterations": 3, "pool_size": 24}


def make_setup(num_classes: int = 4, per: int = 24, size: int = 16):
    """A tiny random dataset and a tiny ConvNet teacher; identical in every process that calls it."""
    g = torch.Generator().manual_seed(0)
    imgs = (torch.rand(num_classes * per, 3, size, size, generator=g) * 255).to(torch.uint8)
    labels = torch.arange(num_classes).repeat_interleave(per)
    ds = ImageDataset(imgs, labels, [f"class{c}" for c in range(num_classes)], (0.5,) * 3, (0.25,) * 3, name="toy")
    torch.manual_seed(0)
    net = create_model("convnet-d2", num_classes, size, width=8)
    return ds, Teacher(net, "convnet-d2", ds.classes, ds.mean, ds.std, size, arch_kw={"width": 8})


def run_method(name: str, kw: dict, num_classes: int = 4) -> DistilledSet:
    """The ordinary single-process run (no scope, no parts)."""
    ds, teacher = make_setup(num_classes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return create_method(name, **kw)(ds, teacher, device="cpu", progress=False)


def child_cmd(runs: list, num_classes: int = 4, resume: bool = False) -> list:
    """argv of a process that builds the setup and calls distill_sharded for each (method, kw, output)
    of `runs` (RANK etc. come from its environment)."""
    code = ("import sys, json, warnings, torch; torch.set_num_threads(1); warnings.simplefilter('ignore');"
            f"sys.path.insert(0, {str(ROOT)!r});"
            "from tests.test_distributed import make_setup;"
            "from ddkit.methods.base import create_method; import ddkit.distributed as D; import ddkit.ranks as R;"
            f"ds, t = make_setup({num_classes});"
            f"runs = json.loads({json.dumps([[n, kw, str(o)] for n, kw, o in runs])!r});"
            "R.init_distributed();"  # one process group for all runs (a no-op without torchrun's env)
            "[D.distill_sharded(create_method(n, **kw), ds, t, o, device='cpu', progress=False, "
            f"resume={resume}) for n, kw, o in runs];"
            "R.cleanup_distributed()")
    return [sys.executable, "-c", code]


def assert_same(a: DistilledSet, b: DistilledSet) -> None:
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.labels, b.labels)
    assert sorted(a.soft) == sorted(b.soft)
    for k in a.soft:
        assert torch.equal(a.soft[k], b.soft[k]), k


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- topology ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 5, 10, 1000])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shards_partition_classes(k, world):
    shards = [shard_classes(k, r, world) for r in range(world)]
    flat = [c for s in shards for c in s]
    assert sorted(flat) == list(range(k)) and len(flat) == len(set(flat))  # union = all, disjoint
    for r, s in enumerate(shards):
        assert all(c % world == r for c in s)  # interleaved
        assert len(s) in (k // world, k // world + 1)  # balanced


def test_parse_shard_and_env(monkeypatch):
    assert parse_shard("3/8") == (3, 8)
    for bad in ("8/8", "1", "a/b", "-1/2"):
        with pytest.raises(DDKitError):
            parse_shard(bad)
    with pytest.raises(DDKitError):
        shard_classes(10, 2, 2)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert dist_env().world == 1 and not dist_env().torchrun
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    env = dist_env()
    assert (env.rank, env.world, env.local_rank, env.torchrun) == (3, 4, 1, True)


# -- two real processes under gloo ------------------------------------------------------------------
def test_two_process_gloo_equals_one_process(tmp_path):
    runs = [("random", {"ipc": 3}, tmp_path / "random"), ("lic", LIC_KW, tmp_path / "lic")]
    port = _free_port()
    procs = []
    for rank in range(2):  # what `torchrun --nproc_per_node 2` sets up, without its launcher overhead
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "CUDA_VISIBLE_DEVICES": ""}
        log = open(tmp_path / f"rank{rank}.log", "w")  # a file, not a pipe: a full pipe could stall a rank
        procs.append((subprocess.Popen(child_cmd(runs), env=env, stdout=log, stderr=subprocess.STDOUT), log))
    for rank, (p, log) in enumerate(procs):
        p.wait(timeout=120)
        log.close()
        assert p.returncode == 0, (tmp_path / f"rank{rank}.log").read_text()[-2000:]
    for name, kw, out in runs:
        merged = DistilledSet.load(out)
        ref = run_method(name, kw)
        assert_same(merged, ref)
        parts = scan_parts(parts_dir_for(out))
        assert [parts[c]["shard"] for c in range(4)] == ["0/2", "1/2", "0/2", "1/2"]  # really split
        assert merged.meta["method"] == name and len(merged.meta["class_seconds"]) == 4
        if name == "random":
            assert merged.meta["source_indices"] == ref.meta["source_indices"]
        else:
            for key in ("selected_indices", "selected_ce", "loss_first", "loss_last"):
                assert merged.meta[key] == ref.meta[key], key


# -- --shard i/n in one process (what SLURM arrays or N shells do) ----------------------------------
def test_shards_then_auto_merge_equal_single_run(tmp_path):
    ds, teacher = make_setup(5)
    out = tmp_path / "sel"
    method = create_method("random", ipc=2, seed=7)
    assert distill_sharded(method, ds, None, out, shard="1/2", progress=False) is None  # incomplete: no merge
    assert sorted(scan_parts(parts_dir_for(out))) == [1, 3]
    merged = distill_sharded(method, ds, None, out, shard=(0, 2), progress=False,  # completes the set: merges
                             extra_meta={"dataset_root": "/data/toy"})
    ref = method(ds, None, device="cpu", progress=False)
    assert merged is not None and out.is_dir()
    assert_same(merged, ref)
    assert_same(DistilledSet.load(out), ref)
    assert merged.meta["source_indices"] == ref.meta["source_indices"]
    assert DistilledSet.load(out).meta["dataset_root"] == "/data/toy"  # shard 0's parts carry it
    with pytest.raises(FileExistsError):
        merge_parts(parts_dir_for(out), out)
    again = merge_parts(parts_dir_for(out), overwrite=True)  # output inferred from the .parts name
    assert_same(again, ref)


def test_part_header_and_fingerprint(tmp_path):
    ds, teacher = make_setup(3)
    m = create_method("lic", **LIC_KW)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        distill_parts(m, ds, teacher, tmp_path, [2], progress=False)
    h = read_header(part_path(tmp_path, 2))
    assert h["class"] == 2 and h["method"] == "lic" and h["config"]["iterations"] == 3
    assert h["fingerprint"] == run_fingerprint(m, ds, teacher)
    assert sorted(h["class_meta"]) == ["loss_curve", "loss_first", "loss_last", "selected_ce", "selected_indices",
                                       "timings"]
    assert run_fingerprint(create_method("lic", **{**LIC_KW, "seed": 1}), ds, teacher) != h["fingerprint"]
    other = Teacher(create_model("convnet-d2", 3, 16, width=8), "convnet-d2", ds.classes, ds.mean, ds.std, 16)
    assert run_fingerprint(m, ds, other) != h["fingerprint"]  # other weights, other run


def test_runs_are_never_mixed(tmp_path):
    ds, _ = make_setup(4)
    distill_parts(create_method("random", ipc=2), ds, None, tmp_path, [0, 1], progress=False)
    with pytest.raises(DDKitError, match="--resume"):  # same run, no --resume
        distill_parts(create_method("random", ipc=2), ds, None, tmp_path, [0, 1], progress=False)
    with pytest.raises(DDKitError, match="different run"):
        distill_parts(create_method("random", ipc=2, seed=5), ds, None, tmp_path, [2, 3], resume=True,
                      progress=False)
    assert distill_parts(create_method("random", ipc=2), ds, None, tmp_path, [0, 1, 2], resume=True,
                         progress=False) == [2]
    distill_parts(create_method("random", ipc=2, seed=5), ds, None, tmp_path, [0], overwrite=True, progress=False)
    assert sorted(scan_parts(tmp_path)) == [0]  # the other run's parts were discarded


def test_non_separable_method_refused_on_a_shard_not_on_all_classes(tmp_path):
    ds, _ = make_setup(2)
    with pytest.raises(DDKitError, match="couples classes"):
        distill_parts(create_method("ccs", ipc=1), ds, None, tmp_path / "a", [0], progress=False)
    with pytest.raises(DDKitError, match="couples classes"):
        distill_sharded(create_method("ccs", ipc=1), ds, None, tmp_path / "b", shard="1/2", progress=False)


@pytest.fixture
def bad_methods():
    """Two misbehaving methods, registered for one test only (the live registry must stay the shipped one):
    one yields a class it was not asked for, one forgets a class."""

    @register_method("test-extra-class", config=MethodConfig)
    def _extra(dataset, teacher, cfg, classes, *, device, progress=True):
        """Yields every class whatever it is asked."""
        for c in range(dataset.num_classes):
            yield ClassResult(c, to_float(dataset.get(dataset.class_indices(c)[:cfg.ipc])))

    @register_method("test-missing-class", config=MethodConfig)
    def _missing(dataset, teacher, cfg, classes, *, device, progress=True):
        """Forgets its last class."""
        for c in classes[:-1]:
            yield ClassResult(c, to_float(dataset.get(dataset.class_indices(c)[:cfg.ipc])))

    yield
    METHODS.unregister("test-extra-class")
    METHODS.unregister("test-missing-class")


def test_driver_refuses_a_method_that_breaks_the_contract(tmp_path, bad_methods):
    ds, _ = make_setup(4)
    with pytest.raises(DDKitError, match="not asked for"):
        distill_parts(create_method("test-extra-class", ipc=2), ds, None, tmp_path / "a", [1, 3], progress=False)
    with pytest.raises(DDKitError, match="no result for class"):
        create_method("test-missing-class", ipc=2)(ds, None, device="cpu", progress=False)


def test_every_method_is_driven_by_classes_no_hook_needed(tmp_path):
    """Shards of a plain generator method, resumed, merge to the one-process set (no per-method code)."""
    m = create_method("random", ipc=2, seed=3)
    ds, _ = make_setup(4)
    assert distill_parts(m, ds, None, tmp_path, [1, 3], progress=False) == [1, 3]
    assert sorted(scan_parts(tmp_path)) == [1, 3]
    assert distill_parts(m, ds, None, tmp_path, None, resume=True, progress=False) == [0, 2]
    merged = merge_parts(tmp_path, tmp_path.parent / "merged", pngs=False)
    single = m(ds, None, device="cpu", progress=False)
    assert_same(merged, single)
    assert merged.meta["source_indices"] == single.meta["source_indices"]
