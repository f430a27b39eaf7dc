"""bench/profile_steps.py runs end to end on tiny shapes and writes the documented JSON structure."""
from __future__ import annotations

import json

import torch

from ddkit.utils import stage
from tests.conftest import load_bench_script


def test_profile_steps_tiny(tmp_path):
    out = tmp_path / "profile.json"
    threads = torch.get_num_threads()
    try:
        rc = load_bench_script("profile_steps.py").main(
            ["--device", "cpu", "--threads", "1", "--size", "16", "--width", "16", "--lic-iterations", "2",
             "--large-size", "32", "--large-iterations", "1", "--eval-steps", "2", "--draw-steps", "4",
             "--rounds", "1", "--top", "5", "--output", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    res = json.loads(out.read_text())
    for key in ("command", "git_revision", "machine", "environment", "workloads", "before_after"):
        assert key in res
    assert set(res["workloads"]) == {"lic_step", "slkd_step"}
    for name, w in res["workloads"].items():
        assert w["wall_ms_per_step"] > 0 and w["profiled_wall_ms_per_step"] > 0 and w["cpu_ms_per_step"] > 0
        assert w["compute_ops_per_step"] > 0
        assert 0 < len(w["top_ops"]) <= 5
        for op in w["top_ops"]:
            assert op["name"] and op["self_ms_per_step"] >= 0 and 0 <= op["pct_of_self_cpu"] <= 100
        assert any(op["self_ms_per_step"] > 0 for op in w["top_ops"])
        stages = w["stages"]
        assert {"augmentation", "teacher_forward", "backward", "optimizer", "other"} <= set(stages)
        # every stage label the library sets was seen by the profiler
        assert all(stages[s]["ms_per_step"] > 0 for s in ("augmentation", "teacher_forward", "backward", "optimizer"))
    assert "residual_forward" in res["workloads"]["lic_step"]["stages"]
    assert "student_forward" in res["workloads"]["slkd_step"]["stages"]
    assert len(res["before_after"]) == 7
    for ab in res["before_after"].values():
        variants = ab["variants"]
        assert len(variants) >= 2
        first = next(iter(variants.values()))
        assert first["after_speedup"] == 1.0
        assert all(v["ms_per_step"] > 0 and len(v["rounds_ms"]) == 1 for v in variants.values())


def test_stage_labels_are_free_without_profiler():
    # no profiler: a bare nullcontext (nothing recorded); under a profiler: a real record_function range
    from contextlib import nullcontext

    assert isinstance(stage("x"), nullcontext)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        with stage("lic.test_label"):
            torch.ones(2).sum()
    assert any(e.key == "lic.test_label" for e in prof.key_averages())
