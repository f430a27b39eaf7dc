"""bench/parity/rded_diag.py (issue #27): the RDED pair's draw-level verdict folds one accuracy per synthesis draw
(the row's own set first, then every extra seed judged) per side and applies the pass rule to those, so the
set-level spread a single pair cannot see is inside the tolerance. Built on a fake run folder: no official code."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

PARITY = Path(__file__).resolve().parents[1] / "bench" / "parity"


@pytest.fixture()
def diag(monkeypatch):
    monkeypatch.syspath_prepend(str(PARITY))
    for name in ("rded_diag", "rded_pair", "selection_pair", "selection_common", "common"):
        sys.modules.pop(name, None)
    import rded_diag
    return rded_diag


def _judged(w: Path, side: str, acc: float, with_set: bool = True) -> None:
    out = w / f"eval_ddkit_{side}" / "seed0"
    out.mkdir(parents=True)
    (out / "summary.json").write_text(json.dumps({"results": [{"set": "distilled", "accs": [acc / 100]}]}))
    if with_set:
        (w / f"{side}_set").mkdir()


def test_draw_level_verdict_uses_every_judged_draw(diag, tmp_path):
    _judged(tmp_path, "ddkit", 44.0, with_set=False)  # the row's sets: student seed 0 of the pair's judge
    _judged(tmp_path, "official", 47.0, with_set=False)
    _judged(tmp_path, "ddkit_jpeg", 43.0)
    for k, acc in ((1, 45.0), (2, 46.0)):
        _judged(tmp_path, f"ddkit_seed{k}", acc)
    _judged(tmp_path, "official_seed3", 48.0)
    (tmp_path / "official_seed4_set").mkdir()  # built, not judged yet: left out, not counted as 0
    out = diag.diagnostics(tmp_path)
    d = out["draws"]
    assert d["ddkit"]["per_draw"] == [44.0, 45.0, 46.0] and d["official"]["per_draw"] == [47.0, 48.0]
    assert d["ddkit"]["mean"] == 45.0 and d["official"]["mean"] == 47.5 and d["official"]["std"] == 0.5
    # |45.0 - 47.5| = 2.5 > max(1, 2 x 0.82): fails; the jpeg check is a diagnostic, never a draw
    assert d["verdict"] == {"delta": -2.5, "tolerance": 1.64, "pass": False}
    assert out["ddkit_jpeg"]["ddkit_judge_student_seed0"] == 43.0 and "official_seed4" not in out


def test_no_verdict_from_one_draw_a_side(diag, tmp_path):
    _judged(tmp_path, "ddkit", 44.0, with_set=False)
    _judged(tmp_path, "official", 47.0, with_set=False)
    _judged(tmp_path, "ddkit_seed1", 45.0)
    assert "draws" not in diag.diagnostics(tmp_path)  # the official side has one draw: no spread to judge by
