"""bench/parity/render.py (issue #27): docs/parity.md is exactly what the renderer makes of the committed JSON,
an edited page or a changed number is noticed, every planned method keeps a row, and the pass rule reads as
the page states it: |ddkit − official| <= max(1.0, 2 × the larger std)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.conftest import load_bench_script

render = load_bench_script("parity/render.py")
common = load_bench_script("parity/common.py")


def test_committed_page_matches_renderer():
    assert render.main(["--check"]) == 0, "docs/parity.md differs from `python bench/parity/render.py`: rerun it"


def _copy_inputs(tmp: Path) -> None:
    (tmp / "bench" / "parity").mkdir(parents=True)
    shutil.copy(render.ROOT / render.PLAN, tmp / render.PLAN)
    (tmp / "bench" / "results").mkdir()
    for f in (render.ROOT / "bench" / "results").glob("parity_*.json"):
        shutil.copy(f, tmp / "bench" / "results" / f.name)
    (tmp / "docs").mkdir()
    shutil.copy(render.ROOT / render.DOC, tmp / render.DOC)


def test_check_fails_on_an_edited_page(tmp_path: Path):
    _copy_inputs(tmp_path)
    page = tmp_path / render.DOC
    page.write_text(page.read_text().replace("| DM |", "| DM (edited) |", 1))
    assert render.main(["--check", "--root", str(tmp_path)]) == 1


def test_check_fails_when_a_number_changes(tmp_path: Path):
    _copy_inputs(tmp_path)
    files = sorted((tmp_path / "bench" / "results").glob("parity_*.json"))
    assert files, "no parity_*.json committed: the table would be empty"
    doc = json.loads(files[0].read_text())
    row = next(iter(doc["rows"].values()))
    row["settings"]["iterations"] += 1  # every row has settings, judged or not
    row["speed"]["official_s_per_iteration"] = 2 * (row["speed"]["official_s_per_iteration"] or 1.0)
    files[0].write_text(json.dumps(doc))
    assert render.main(["--check", "--root", str(tmp_path)]) == 1


def test_every_planned_method_has_a_row(tmp_path: Path):
    _copy_inputs(tmp_path)
    for f in (tmp_path / "bench" / "results").glob("parity_*.json"):
        f.unlink()  # nothing measured: every row must still be there, saying why not
    text = render.render(tmp_path)
    plan = json.loads((tmp_path / render.PLAN).read_text())
    for m in plan["methods"]:
        for ipc in m["ipcs"]:
            assert f"| {m['name']} | {m['repo']}@{m['commit']} | IPC {ipc} | not run (" in text


def test_pass_rule():
    a = {"mean": 40.0, "std": 0.3}
    assert common.verdict({"mean": 41.0, "std": 0.2}, a)["pass"]  # within the 1.0-point floor
    assert not common.verdict({"mean": 41.1, "std": 0.2}, a)["pass"]
    assert common.verdict({"mean": 38.0, "std": 1.0}, a)["pass"]  # 2 x the larger std = 2.0
    assert not common.verdict({"mean": 37.9, "std": 1.0}, a)["pass"]
    assert common.verdict({"mean": 41.0, "std": 0.2}, a)["delta"] == 1.0


def test_mean_std_is_ddof0():
    s = common.mean_std([30.0, 32.0])
    assert (s["mean"], s["std"], s["n"]) == (31.0, 1.0, 2)
