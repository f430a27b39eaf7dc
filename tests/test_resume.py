"""Durability: a run killed with SIGKILL resumes to the uninterrupted result bit for bit; damaged parts are redone."""
from __future__ import annotations

import os
import signal
import subprocess
import time
import warnings

import pytest
import torch

from ddkit.distilled import DistilledSet
from ddkit.distributed import (distill_parts, distill_sharded, merge_parts, part_path, parts_dir_for, read_header,
                               read_part, scan_parts)
from ddkit.methods.base import create_method
from tests.test_distributed import LIC_KW, assert_same, child_cmd, make_setup, run_method

SLOW_LIC = {"ipc": 1, "iterations": 100, "pool_size": 24}  # ~0.2 s per class: time to kill mid-run
K = 8


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    out = tmp_path / "lic"
    parts = parts_dir_for(out)
    proc = subprocess.Popen(child_cmd([("lic", SLOW_LIC, out)], num_classes=K), env=_clean_env(),
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if parts.is_dir() and len([c for c, h in scan_parts(parts).items() if h is not None]) >= 2:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up: whatever is on disk is what a crash leaves
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the child finished before it could be killed"
    done = {c for c, h in scan_parts(parts).items() if h is not None}
    assert 2 <= len(done) < K and not out.exists()
    created = {c: read_header(part_path(parts, c))["created"] for c in done}
    mtimes = {c: part_path(parts, c).stat().st_mtime_ns for c in done}

    ds, teacher = make_setup(K)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(Exception, match="--resume"):  # finished classes are never silently redone
            distill_sharded(create_method("lic", **SLOW_LIC), ds, teacher, out, device="cpu", progress=False)
        resumed = distill_sharded(create_method("lic", **SLOW_LIC), ds, teacher, out, device="cpu",
                                  progress=False, resume=True)
    assert resumed is not None
    for c in done:  # the finished classes were skipped, not recomputed
        assert part_path(parts, c).stat().st_mtime_ns == mtimes[c]
        assert read_header(part_path(parts, c))["created"] == created[c]
    assert not list(parts.glob(".*.tmp-*"))  # a temporary file the kill left behind is cleaned up
    ref = run_method("lic", SLOW_LIC, num_classes=K)
    assert_same(resumed, ref)
    assert_same(DistilledSet.load(out), ref)
    for key in ("selected_indices", "selected_ce", "loss_first", "loss_last"):
        assert resumed.meta[key] == ref.meta[key], key


@pytest.fixture()
def finished(tmp_path):
    """All 4 lic classes in parts, plus the plain single-process reference."""
    ds, teacher = make_setup(4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        distill_parts(create_method("lic", **LIC_KW), ds, teacher, tmp_path / "p", progress=False)
    return tmp_path / "p", ds, teacher, run_method("lic", LIC_KW)


def test_truncated_part_is_not_finished_and_is_redone(finished, tmp_path):
    parts, ds, teacher, ref = finished
    victim = part_path(parts, 1)
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])  # e.g. a copy cut short, or a non-atomic writer
    (parts / f".{part_path(parts, 2).name}.tmp-999").write_bytes(data[:100])  # debris of a killed writer
    heads = scan_parts(parts)
    assert heads[1] is None and all(heads[c] is not None for c in (0, 2, 3))
    with pytest.raises(Exception, match="incomplete or corrupt"):
        merge_parts(parts, tmp_path / "merged")
    keep = {c: part_path(parts, c).stat().st_mtime_ns for c in (0, 2, 3)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        redo = distill_parts(create_method("lic", **LIC_KW), ds, teacher, parts, resume=True, progress=False)
    assert redo == [1]
    assert all(part_path(parts, c).stat().st_mtime_ns == keep[c] for c in keep)
    assert_same(merge_parts(parts, tmp_path / "merged", pngs=False), ref)


def test_bitflip_is_caught_by_checksum(finished, tmp_path):
    parts, _, _, _ = finished
    victim = part_path(parts, 3)
    data = bytearray(victim.read_bytes())
    data[-5] ^= 0xFF  # same size, damaged pixel data: only the checksum can tell
    victim.write_bytes(bytes(data))
    assert read_header(victim) is not None
    with pytest.raises(Exception, match="checksum"):
        read_part(victim)
    with pytest.raises(Exception, match="checksum"):
        merge_parts(parts, tmp_path / "merged", pngs=False)


def test_merge_refuses_missing_classes(finished, tmp_path):
    parts, _, _, _ = finished
    part_path(parts, 2).unlink()
    with pytest.raises(Exception, match=r"1 of 4 classes have no part yet \(e.g. \[2\]\)"):
        merge_parts(parts, tmp_path / "merged")
    with pytest.raises(FileNotFoundError):
        merge_parts(tmp_path / "nothing.parts")
    assert not (tmp_path / "merged").exists()


def test_merged_set_round_trips_with_soft_labels(finished, tmp_path):
    parts, _, _, ref = finished
    merged = merge_parts(parts, tmp_path / "m")
    loaded = DistilledSet.load(tmp_path / "m")
    assert_same(loaded, ref)
    assert loaded.soft["region_soft"].shape == (4, 4, 4) and loaded.soft["soft"].dtype == torch.float32
    assert merged.meta["wall_seconds"] == pytest.approx(sum(merged.meta["class_seconds"]))
    assert (tmp_path / "m" / "grid.png").is_file()
