"""The house rules of issue #11, as tests that fail when an arrow appears that must never exist.

Imports run one way: data / models / augment → teachers → methods → set format → evaluate → study /
report → CLI. Each check runs in a fresh interpreter, so a module another test imported cannot hide
an arrow.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ddkit.distilled import DistilledSet
from ddkit.distributed import _try_merge_once, distill_parts, parts_dir_for
from ddkit.methods import create_method
from ddkit.utils import atomic_dir
from tests.test_distributed import make_setup

ROOT = Path(__file__).resolve().parents[1]


def _loaded_after(code: str) -> list:
    """ddkit module names in sys.modules after running `code` in a fresh interpreter."""
    prog = code + "\nimport sys, json; print(json.dumps(sorted(m for m in sys.modules if m.startswith('ddkit'))))"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_methods_never_load_the_evaluator():
    mods = _loaded_after("import ddkit.methods as m; m.list_methods()")  # every built-in method module
    assert "ddkit.methods.lic" in mods and "ddkit.methods.cad" in mods
    assert not [m for m in mods if m.startswith("ddkit.evaluate")], mods


def test_evaluator_never_loads_a_method():
    mods = _loaded_after("import ddkit.evaluate")
    assert "ddkit.evaluate.evaluator" in mods
    assert not [m for m in mods if m.startswith("ddkit.methods")], mods


@pytest.mark.parametrize("pkg", ["ddkit.data", "ddkit.models", "ddkit.teachers", "ddkit.methods", "ddkit.evaluate",
                                 "ddkit.distributed", "ddkit.labels", "ddkit.study", "ddkit.dcs", "ddkit.demo"])
def test_core_knows_no_command_line(pkg):
    assert "ddkit.cli" not in _loaded_after(f"import {pkg}")


def test_shards_do_not_start_process_groups():
    """Only the entry point joins torchrun's group: library modules never call init_process_group."""
    hits = [p.relative_to(ROOT).as_posix() for p in (ROOT / "src" / "ddkit").rglob("*.py")
            if "init_process_group" in p.read_text() and p.name != "ranks.py"]
    assert hits == []


def test_stale_merge_lock_of_a_killed_merger_is_broken(tmp_path):
    """kill -9 during the merge leaves .merge.lock: the next run must still merge (not 'shard done')."""
    ds, _ = make_setup(3)
    m = create_method("random", ipc=2)
    out = tmp_path / "set"
    parts = parts_dir_for(out)
    distill_parts(m, ds, None, parts, progress=False)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (parts / ".merge.lock").write_text(f"{dead}@{os.uname().nodename}")
    merged = _try_merge_once(parts, out, overwrite=False)
    assert merged is not None and out.is_dir() and not (parts / ".merge.lock").exists()
    # a live owner's lock is respected
    (parts / ".merge.lock").write_text(f"{os.getpid()}@{os.uname().nodename}")
    assert _try_merge_once(parts, tmp_path / "other", overwrite=False) is None


def test_orphan_temporary_folder_of_a_killed_writer_is_removed(tmp_path):
    out = tmp_path / "set"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    orphan = tmp_path / f".set.tmp-{dead}-abc123"
    orphan.mkdir()
    (orphan / "images.safetensors").write_bytes(b"half")
    live = tmp_path / f".set.tmp-{os.getpid()}-zzz"  # a concurrent writer of this very process: kept
    live.mkdir()
    DistilledSet(torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]), ["a", "b"], [0.5], [0.25]).save(out, pngs=False)
    assert out.is_dir() and not orphan.exists() and live.exists()


def test_atomic_dir_names_its_writer(tmp_path):
    with atomic_dir(tmp_path / "x") as tmp:
        assert tmp.name.startswith(f".x.tmp-{os.getpid()}-")
        time.sleep(0)


def test_regime_is_parsed_once_at_the_config():
    from ddkit.evaluate import EvalConfig, Regime
    from ddkit.utils import DDKitError

    assert EvalConfig(regime="SL+KD").regime == "slkd" == Regime.SLKD
    assert EvalConfig(regime="hard").regime == "hl" and type(EvalConfig(regime="soft").regime) is str
    import dataclasses
    assert dataclasses.replace(EvalConfig(), regime="kd").regime == "slkd"
    with pytest.raises(DDKitError, match="unknown regime"):
        EvalConfig(regime="labels")


def test_one_optimiser_builder_for_teacher_dynamics_and_evaluator():
    """No stage builds SGD/AdamW itself; ddkit.optim groups decay as each protocol says."""
    for rel in ("teachers/train.py", "methods/dynamics.py", "evaluate/student.py", "evaluate/stacked.py"):
        text = (ROOT / "src" / "ddkit" / rel).read_text()
        assert "torch.optim.SGD(" not in text and "torch.optim.AdamW(" not in text, rel
    # one epoch loop for the one-at-a-time and the stacked students (evaluate/student.py's epoch_lines)
    assert "range(plan.iterations)" not in (ROOT / "src" / "ddkit" / "evaluate" / "stacked.py").read_text()
    from ddkit.optim import decay_groups, make_optimizer

    stacked = [torch.zeros(3, 4, 2), torch.zeros(3, 4)]  # S=3 students: a weight (rank 2) and a bias (rank 1)
    groups = decay_groups(stacked, 0.1, decay_norm_bias=False, ranks=[t.ndim - 1 for t in stacked])
    assert [len(g["params"]) for g in groups] == [1, 1] and groups[0]["params"][0] is stacked[0]

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    opt = make_optimizer(net, "sgd", 0.1, weight_decay=5e-4, decay_norm_bias=False, nesterov=True)
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-4, 0.0]
    assert [len(g["params"]) for g in opt.param_groups] == [1, 3]  # conv weight | conv bias, bn weight, bn bias
    assert opt.param_groups[0]["nesterov"] is True
    assert len(make_optimizer(net, "AdamW", 1e-3, weight_decay=0.01).param_groups) == 1
