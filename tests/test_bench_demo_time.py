"""bench/demo_time.py: a timed command's row carries its exit code, wall/CPU seconds and the demo's own facts."""
from __future__ import annotations

import json
import sys

from tests.conftest import load_bench_script


def test_time_command_reads_the_demo_folder_and_the_exit_code(tmp_path):
    mod = load_bench_script("demo_time.py")
    out = tmp_path / "demo"
    doc = {"wall_seconds": 1.25, "status": {"random": "ok"}}
    code = (f"import json, pathlib; p = pathlib.Path({str(out)!r}); p.mkdir(); "
            f"(p / 'results.json').write_text(json.dumps({doc!r})); (p / 'report.html').write_text('x')")
    row = mod.time_command([sys.executable, "-c", code], out, cwd=tmp_path)
    assert row["rc"] == 0 and row["demo_wall_s"] == 1.2 and row["status"] == {"random": "ok"} and row["report_html"]
    assert row["wall_s"] >= 0 and row["cpu_s"] >= 0
    failed = mod.time_command([sys.executable, "-c", "raise SystemExit(2)"], tmp_path / "none", cwd=tmp_path)
    assert failed["rc"] == 2 and "demo_wall_s" not in failed
    assert json.dumps(mod.lscpu())  # JSON-safe (empty where lscpu is missing)
