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


def _loop_methods() -> list:
    plan = json.loads((render.ROOT / render.PLAN).read_text())
    return [m for m in plan["methods"] if m.get("kind") == "recover loop"]


def _copy_inputs(tmp: Path) -> None:
    (tmp / "bench" / "parity").mkdir(parents=True)
    shutil.copy(render.ROOT / render.PLAN, tmp / render.PLAN)
    (tmp / "bench" / "results").mkdir()
    for f in (render.ROOT / "bench" / "results").glob("parity_*.json"):
        shutil.copy(f, tmp / "bench" / "results" / f.name)
    for m in _loop_methods():  # the recover-loop results plan.json names
        if (render.ROOT / m["result"]).is_file():
            shutil.copy(render.ROOT / m["result"], tmp / m["result"])
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
    for f in (tmp_path / "bench" / "results").glob("*.json"):
        f.unlink()  # nothing measured: every row must still be there, saying why not
    text = render.render(tmp_path)
    plan = json.loads((tmp_path / render.PLAN).read_text())
    for m in plan["methods"]:
        if m.get("kind") == "recover loop":
            assert f"| {m['name']} | {m['repo']}@{m['commit']} | recover loop | not run (" in text
            continue
        for ipc in m["ipcs"]:
            assert f"| {m['name']} | {m['repo']}@{m['commit']} | IPC {ipc} | not run (" in text


def _loop_row(text: str, name: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"| {name} |"))


def _edit_loop_result(tmp: Path, name: str, edit) -> str:
    """Copy the inputs, apply `edit` to the recover-loop JSON of method `name`, return its rendered row."""
    _copy_inputs(tmp)
    m = next(m for m in _loop_methods() if m["name"] == name)
    path = tmp / m["result"]
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    return _loop_row(render.render(tmp), name)


def test_recover_loop_rows_render_their_committed_verdicts(tmp_path: Path):
    _copy_inputs(tmp_path)
    text = render.render(tmp_path)
    measured = [m for m in _loop_methods() if (tmp_path / m["result"]).is_file()]
    assert measured, "no recover-loop result committed"
    for m in measured:
        doc = json.loads((tmp_path / m["result"]).read_text())
        row = _loop_row(text, m["name"])
        word = "recover loop pass" if render.loop_verdict(doc)["pass"] else "recover loop **fail**"
        assert word in row and "accuracy not run (" in row
        assert f"{doc['run'][render.RUN]['mean']:.2e}" in row and f"{doc['run'][render.FLOOR]['mean']:.2e}" in row


def test_recover_loop_row_fails_when_the_control_passed(tmp_path: Path):
    def control_passes(doc):
        doc["control"]["pass"] = True  # by its flag alone: the numbers still say it is far away

    row = _edit_loop_result(tmp_path, "CV-DD", control_passes)
    assert "recover loop **fail** — the control passed too" in row


def test_recover_loop_row_fails_when_the_control_is_within_the_floor(tmp_path: Path):
    def control_close(doc):  # the flag says fail, the numbers say the control is as close as the run
        doc["control"][render.RUN]["mean"] = doc["run"][render.FLOOR]["mean"]

    assert "recover loop **fail** — the control passed too" in _edit_loop_result(tmp_path, "CV-DD", control_close)


def test_recover_loop_row_fails_when_ddkit_is_outside_the_floor(tmp_path: Path):
    def far(doc):  # the flag still says pass: the renderer re-derives it from the numbers
        doc["run"][render.RUN]["mean"] = 1.6 * doc["run"][render.FLOOR]["mean"]

    assert "recover loop **fail** — ddkit is further" in _edit_loop_result(tmp_path, "CV-DD", far)


def test_loop_verdict_rule():
    def res(run_mean, ctl_mean, run_flag=True, ctl_flag=False):
        floor = {"mean": 1.0, "max": 1.0}
        return {"run": {"pass": run_flag, render.RUN: {"mean": run_mean}, render.FLOOR: floor},
                "control": {"pass": ctl_flag, render.RUN: {"mean": ctl_mean}, render.FLOOR: floor}}

    assert render.loop_verdict(res(1.5, 3.0))["pass"]  # at the 1.5x limit
    assert not render.loop_verdict(res(1.51, 3.0))["pass"]
    assert not render.loop_verdict(res(1.0, 1.4))["pass"]  # the control within the floor voids the check
    assert not render.loop_verdict(res(1.0, 3.0, run_flag=False))["pass"]
    assert not render.loop_verdict(res(1.0, 3.0, ctl_flag=True))["pass"]


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


def _coreset_row(text: str, label: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"| DeepCore coresets: {label} |"))


def test_coreset_rows_rederive_their_criteria(tmp_path: Path):
    _copy_inputs(tmp_path)
    path = tmp_path / "bench" / "results" / "parity_deepcore.json"
    assert path.is_file(), "no DeepCore coreset result committed"
    doc = json.loads(path.read_text())
    text = render.render(tmp_path)
    for key, r in doc["methods"].items():
        word = {True: "pass", False: "**fail**", None: "pending"}[render.coreset_check(key, r)["pass"]]
        assert f"| {word}: " in _coreset_row(text, render.CORESET_NAMES[key])
    doc["methods"]["grand"]["spearman"] = 0.89  # a weaker correlation / one differing pick flips the row
    doc["methods"]["herding"]["jaccard_deepcore_argmin"] = 0.9
    path.write_text(json.dumps(doc))
    text = render.render(tmp_path)
    assert "| **fail**: Spearman 0.8900" in _coreset_row(text, "GraNd")
    assert "| **fail**: Jaccard 0.90 with" in _coreset_row(text, "Herding")


def test_coreset_forgetting_rule():
    r = {"spearman_learned_only": 0.50, "floor_spearman": 0.55}
    assert render.coreset_check("forgetting", r)["pass"]  # within 0.05 of the floor
    assert not render.coreset_check("forgetting", {**r, "spearman_learned_only": 0.49})["pass"]
    assert render.coreset_check("forgetting", {"spearman_learned_only": 0.5})["pass"] is None  # no floor yet
    assert render.coreset_check("kcenter", {"jaccard_deepcore_start": 1.0})["pass"]
    assert not render.coreset_check("entropy", {"spearman": 0.899})["pass"]


def test_draw_diagnostics_render_per_draw_with_their_verdict():
    """Each draw-level diagnostic of a row (common.draw_fold's output) is one details line with its per-draw
    accuracies and verdict; a fold without a verdict (one draw a side) and unknown keys are not rendered."""
    fold = {"ddkit": {"per_draw": [32.04, 33.36]}, "official": {"per_draw": [34.32, 33.48]},
            "verdict": {"delta": -1.2, "tolerance": 1.0, "pass": False}}
    lines = render.draw_lines({"diagnostics": {"experts_start": fold, "draws": {"ddkit": {"per_draw": [1.0]}},
                                               "ddkit_jpeg": {"verdict": {}}}})
    assert len(lines) == 1 and "experts' 1000 training images" in lines[0]
    assert lines[0].endswith("ddkit 32.04, 33.36; official 34.32, 33.48; Δ -1.20 (tol 1.00): fail")
    assert render.draw_lines({}) == []


def test_draw_verdict_says_when_every_draw_falls_on_one_side():
    """The pass rule can pass a gap that a wide std hides; the table then says that ddkit's draws all fall below
    (or above) the official's."""
    def row(dd, off, ok):
        return {"diagnostics": {"draws": {"ddkit": {"n": len(dd), "mean": 0, "std": 0, "per_draw": dd},
                                          "official": {"n": len(off), "mean": 0, "std": 0, "per_draw": off},
                                          "verdict": {"delta": 0, "tolerance": 1, "pass": ok}}}}
    assert "lower than the official in every draw" in render.draws(row([30.4, 32.0], [33.5, 34.4], True))
    assert "higher than the official in every draw" in render.draws(row([35.0, 36.0], [33.5, 34.4], True))
    assert "every draw" not in render.draws(row([33.0, 35.0], [33.5, 34.4], True))
