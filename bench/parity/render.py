"""Render docs/parity.md (issue #27) from bench/parity/plan.json and bench/results/parity_<method>.json only.

    python bench/parity/render.py           # rewrite docs/parity.md
    python bench/parity/render.py --check   # exit 1 when docs/parity.md differs from what would be rendered

Every method of plan.json has a row; a method (or IPC) without measured results says "not run" and why.
Numbers are last-epoch test accuracy in %, mean ± std (ddof 0) over student seeds. The pass rule is issue
#27's: |ddkit − official| <= max(1.0 point, 2 × the larger std) on the same judge.

A second kind of evidence, `"kind": "recover loop"` in plan.json (the SRe2L descendants): the official
recover function run in-process beside ddkit's method on one small batch, the final images compared pixel by
pixel (bench/parity/recover_loop.py). Its row passes when ddkit's mean |pixel difference| to the official images
is at most 1.5× the floor (the official code against itself from a start nudged by 1e-6) AND the control run
(ddkit with the method's own ingredient removed) fails that rule; both are re-derived here from the numbers.
"""
from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[2]
PLAN = "bench/parity/plan.json"
DOC = "docs/parity.md"
HEADER = ("| method | official repo@commit | settings | official (official judge) | official (ddkit judge) | "
          "ddkit (ddkit judge) | ddkit (official judge) | Δ ddkit−official, ddkit judge | "
          "Δ, official judge | pass/fail (ddkit judge / official judge) | s/iteration official vs ddkit |")
INTRO = """# Parity: ddkit beside the official code

Each row runs a method's official code (unmodified, at the pinned commit, outside this repository) and
ddkit's implementation on the same data — CIFAR-10 (JPEG q75), decoded once by ddkit's loader and handed to
both — with the same reduced settings, then judges both sets with the same evaluators: ddkit's `evaluate` with
the method's native protocol, and the official repository's own evaluation function where it has one.
Accuracies are last-epoch test accuracy (%), mean ± std (ddof 0) over student seeds (n in brackets).
**Pass** when |ddkit − official| ≤ max(1.0 point, 2 × the larger std) on the same judge; a set-level draw
(which real images start the set) is not in the student std, so one pair is one sample of each side.
Speed is seconds per distillation iteration over all classes, both sides run at the same time on the same
2-core machine (shared with other jobs, so absolute seconds are inflated; the ratio is the comparable part).
Rows marked **recover loop** are a different, smaller check (the SRe2L descendants, whose official relabel and
validation code needs a GPU): the official recover function runs in-process beside ddkit's method on one small
batch (tiny random-weight BatchNorm teachers, the same start, the views off on both sides because the two draw
them from different generators; CDA and DWA instead take every step's view from one draw of the driver's, handed
to both sides, since CDA's ingredient is a view schedule) and the final images are compared pixel by pixel.
No two implementations agree
bit for bit after a few Adam steps (a pixel whose gradient is ~0 moves by up to ±lr on rounding noise), so the
floor is the official code against itself from a start nudged by 1e-6: **pass** when ddkit's mean |pixel
difference| to the official images is ≤ 1.5 × that floor's AND a control run — ddkit with the method's own
ingredient removed — fails the same rule (so the check can fail). It says nothing about accuracy.
How to rerun: bench/parity/README.md. This page is rendered by `python bench/parity/render.py` from
bench/parity/plan.json, bench/results/parity_*.json and the recover-loop results named in plan.json;
tests/test_parity_doc.py checks that it matches.
"""


#: the sets a row may judge: both sides, and (recover family) the official images as its JPEG files
SIDES = {"official": "official set", "ddkit": "ddkit set",
         "official_jpeg": "official set as the JPEG files it writes (not in the table)"}


def acc(cell: Optional[Dict[str, Any]]) -> str:
    return "—" if not cell else f"{cell['mean']:.2f} ± {cell['std']:.2f} ({cell['n']})"


def delta(v: Optional[Dict[str, Any]]) -> str:
    return "—" if not v else f"{v['delta']:+.2f} (tol {v['tolerance']:.2f})"


def pf(v: Optional[Dict[str, Any]], cells: Optional[Dict[str, Any]] = None, seeds: int = 0) -> str:
    """pass/fail; 'provisional' while fewer student seeds than planned have finished on either set."""
    if not v:
        return "—"
    word = "pass" if v["pass"] else "**fail**"
    n = min((c["n"] for k, c in (cells or {}).items() if k in ("official", "ddkit")), default=seeds)
    return word + (f" (provisional: {n} of {seeds} seeds)" if n < seeds else "")


def speed(s: Dict[str, Any]) -> str:
    a, b = s.get("official_s_per_iteration"), s.get("ddkit_s_per_iteration")
    if not a or not b:
        return "—"
    r = b / a
    word = f"ddkit {r:.2f}× slower" if r > 1 else f"ddkit {1 / r:.2f}× faster"
    la, lb = s.get("official_loadavg_at_end"), s.get("ddkit_loadavg_at_end")
    if la and lb:  # run one after the other on a shared machine: say under which load each was timed
        word += f"; 1-min load average at the end {la[0]:.1f} vs {lb[0]:.1f} on 2 cores"
    return f"{a:.2f} vs {b:.2f} ({word})"


def settings(s: Dict[str, Any]) -> str:
    if s.get("text"):  # a driver whose settings are not the DC family's (iterations + real batch) says them itself
        return s["text"]
    return (f"IPC {s['ipc']}, {s['iterations']} it, real batch {s['batch_real']}, judges {s['eval_epochs']} ep, "
            f"{s['seeds']} seeds")


def method_rows(m: Dict[str, Any], res: Dict[str, Any]) -> List[str]:
    out = []
    repo = f"{m['repo']}@{m['commit']}"
    rows = res.get("rows", {})
    for ipc in m["ipcs"]:
        if f"ipc{ipc}" not in rows:
            why = m["not_run"] if isinstance(m["not_run"], str) else m["not_run"].get(str(ipc), m["not_run"]["*"])
            out.append(f"| {m['name']} | {repo} | IPC {ipc} | not run ({why}) | | | | | | | |")
            continue
        # the IPC's row, then its variants under other judges (key ipc<k>-<judge regime>, e.g. ipc10-slkd)
        for key in [f"ipc{ipc}"] + sorted(k for k in rows if k.startswith(f"ipc{ipc}-")):
            out += _measured(m, repo, rows[key])
    return out


def _measured(m: Dict[str, Any], repo: str, r: Dict[str, Any]) -> List[str]:
    """One measured row: both sets under both judges, or a partial row while no judge has finished."""
    dj, oj = r["judges"].get("ddkit", {}), r["judges"].get("official", {})
    if not dj and not oj:  # a partial row: distillation timed, no set finished and judged yet
        why = r["speed"].get("partial", "no judge has finished")
        return [f"| {m['name']} | {repo} | {settings(r['settings'])} | not judged yet ({why}) | | | | | | "
                f"— | {speed(r['speed'])} |"]
    return [" | ".join([f"| {m['name']}", repo, settings(r["settings"]), acc(oj.get("official")),
                        acc(dj.get("official")), acc(dj.get("ddkit")), acc(oj.get("ddkit")),
                        delta(dj.get("verdict")), delta(oj.get("verdict")),
                        f"{pf(dj.get('verdict'), dj, r['settings']['seeds'])} / "
                        f"{pf(oj.get('verdict'), oj, r['settings']['seeds'])}{draws(r)}", speed(r["speed"])]) + " |"]


def draws(r: Dict[str, Any]) -> str:
    """The same rule over several distillation draws per side (a row's diagnostics.draws), where a driver has them:
    one pair is one draw of each set, a spread the student seeds do not contain."""
    d = r.get("diagnostics", {}).get("draws")
    if not d or "verdict" not in d:
        return ""
    v, n = d["verdict"], min(d["ddkit"]["n"], d["official"]["n"])
    word = "pass" if v["pass"] else "**fail**"
    dd, off = d["ddkit"].get("per_draw", []), d["official"].get("per_draw", [])
    if dd and off and (max(dd) < min(off) or min(dd) > max(off)):  # the rule cannot see a one-sided split
        word += f" (but ddkit {'lower' if max(dd) < min(off) else 'higher'} than the official in every draw)"
    return (f"; over distillation draws (ddkit judge, student seed 0, {n}+ per side): {word}, "
            f"{d['ddkit']['mean']:.2f} ± {d['ddkit']['std']:.2f} vs {d['official']['mean']:.2f} ± "
            f"{d['official']['std']:.2f}, Δ {v['delta']:+.2f} (tol {v['tolerance']:.2f})")


#: the draw-level diagnostics a row may hold (common.draw_fold's output under these keys), as the details name them
DRAW_DIAGNOSTICS = {"draws": "distillation draws",
                    "experts_start": "distillation draws with ddkit's real start drawn from the experts' 1000 "
                                     "training images (the official side's pool through the hand-over)"}


def draw_lines(r: Dict[str, Any]) -> List[str]:
    """The per-draw accuracies and the verdict of each draw-level diagnostic of a row (common.draw_fold)."""
    out = []
    for key, what in DRAW_DIAGNOSTICS.items():
        d = r.get("diagnostics", {}).get(key)
        if not d or "verdict" not in d:
            continue
        v = d["verdict"]
        out.append(f"  - {what} (ddkit judge, student seed 0): ddkit "
                   + ", ".join(f"{x:.2f}" for x in d["ddkit"]["per_draw"]) + "; official "
                   + ", ".join(f"{x:.2f}" for x in d["official"]["per_draw"])
                   + f"; Δ {v['delta']:+.2f} (tol {v['tolerance']:.2f}): {'pass' if v['pass'] else 'fail'}")
    return out


def details(m: Dict[str, Any], res: Dict[str, Any]) -> List[str]:
    """Per measured method: commands, judges, edits to the official code, machine, notes."""
    if not res.get("rows"):
        return []
    out = [f"### {m['name']}", ""]
    out.append(f"- Official: {res['official']['repo']}@{res['official']['commit']}; edits: {res['official']['edits']}")
    for name, text in res.get("judges", {}).items():
        out.append(f"- {name} judge: {text}")
    for key, r in sorted(res["rows"].items()):
        mach = r.get("machine", {})
        out.append(f"- {key}: `{r['command']}` (ddkit {r.get('ddkit_revision')}, written {r.get('written')}; "
                   f"{mach.get('Model name', '?')}, {mach.get('nproc', '?')} cores, load average "
                   f"{', '.join(f'{x:.1f}' for x in mach.get('loadavg', []))}). Official argv: "
                   f"`{' '.join(r['official_argv'])}`; ddkit: `{r.get('ddkit_command', '')}`.")
        if r.get("judge_command"):
            out.append(f"  - judge: `{r['judge_command']}`")
        for side in ("official", "ddkit", "official_jpeg"):
            for judge in ("official", "ddkit"):
                cell = r["judges"].get(judge, {}).get(side)
                if cell:
                    out.append(f"  - {SIDES[side]}, {judge} judge, per seed: "
                               + ", ".join(f"{v:.2f}" for v in cell["per_seed"])
                               + ("" if side in ("official", "ddkit") else f" (mean {acc(cell)})"))
        out += draw_lines(r)
        if r["speed"].get("how"):
            out.append(f"  - speed: {r['speed']['how']}")
        if r["speed"].get("official_note"):
            out.append(f"  - official timing: {r['speed']['official_note']}")
    for note in m.get("notes", []):
        out.append(f"- Note: {note}")
    return out + [""]


LOOP_FACTOR = 1.5  # recover_loop.FACTOR: ddkit within 1.5x the official-vs-nudged floor
RUN, FLOOR = "pixels_ddkit_vs_official", "pixels_official_vs_official_nudged_1e-6"


def _within(r: Dict[str, Any]) -> bool:
    return r[RUN]["mean"] <= LOOP_FACTOR * r[FLOOR]["mean"]


def loop_verdict(res: Dict[str, Any]) -> Dict[str, Any]:
    """A recover-loop result's verdict, re-derived from its numbers: the run within the floor rule (and saying so
    itself), the control outside it (a control that passes, by its flag or its numbers, voids the check)."""
    run, ctl = res["run"], res["control"]
    run_ok = bool(run["pass"]) and _within(run)
    ctl_passed = bool(ctl["pass"]) or _within(ctl)
    return {"pass": run_ok and not ctl_passed, "run_ok": run_ok, "control_passed": ctl_passed}


def loop_rows(m: Dict[str, Any], res: Dict[str, Any]) -> List[str]:
    """The table row of a recover-loop method: accuracies not run (with the reason), the loop's verdict."""
    repo = f"{m['repo']}@{m['commit']}"
    acc_why = f"accuracy not run ({m['not_run']})"
    if not res:
        return [f"| {m['name']} | {repo} | recover loop | not run ({m.get('loop_not_run', 'no result file yet')}); "
                f"{acc_why} | | | | | | | |"]
    run, ctl, v = res["run"], res["control"], loop_verdict(res)
    word = "pass" if v["pass"] else "**fail**"
    why = ("" if v["pass"] else " — the control passed too, so the check cannot tell" if v["control_passed"]
           else " — ddkit is further from the official images than the floor allows")
    cell = (f"recover loop {word}{why}: mean \\|Δ pixel\\| ddkit–official {run[RUN]['mean']:.2e} vs floor "
            f"{run[FLOOR]['mean']:.2e} (limit {LOOP_FACTOR}×); control ({_control_name(m, res)}): "
            f"{ctl[RUN]['mean']:.2e}, {'passes' if v['control_passed'] else 'fails, as it must'}")
    secs = res.get("seconds") or {k: run.get("seconds", {}).get(k) for k in ("official", "ddkit")}
    speed_cell = (f"whole loop {secs['official']:.1f} s vs {secs['ddkit']:.1f} s (one run each on shared cores; "
                  "not a speed measurement)" if secs.get("official") and secs.get("ddkit") else "—")
    settings_text = res.get("settings_text") or m.get("settings", "recover loop")
    return [f"| {m['name']} | {repo} | {settings_text} | {acc_why} | | | | | | {cell} | {speed_cell} |"]


def _control_name(m: Dict[str, Any], res: Dict[str, Any]) -> str:
    return m.get("control") or res["control"].get("what", "?")


def _machine(mach: Any) -> str:
    if isinstance(mach, str):
        return mach
    return (f"{mach.get('Model name', '?')}, {mach.get('nproc', '?')} cores, load average "
            f"{', '.join(f'{x:.1f}' for x in mach.get('loadavg', []))}")


def loop_details(m: Dict[str, Any], res: Dict[str, Any]) -> List[str]:
    """Per recover-loop method: the official code and every change made to it from outside, the commands, the
    numbers of the run and of the control."""
    if not res:
        return []
    run, ctl, v = res["run"], res["control"], loop_verdict(res)
    edits = res.get("edits") or m.get("edits", "?")
    command = res.get("command") or "; ".join(x["command"] for x in (run, ctl) if x.get("command"))
    git = res.get("git") or run.get("git", "?")
    out = [f"### {m['name']} (recover loop)", "",
           f"- Official: {res.get('official') or run.get('official') or m['repo']}; edits: {edits}",
           f"- Check: {res.get('what', '')}" + (f"; {res['rule']}" if res.get("rule") else ""),
           f"- Run: `{command}` (ddkit {git}" + (f", written {res['written']}" if res.get("written") else "") + "; "
           f"{_machine(res.get('machine', run.get('cpu', '?')))}; torch {res.get('torch', run.get('torch', '?'))}).",
           f"  - ddkit vs official: mean |Δ pixel| {run[RUN]['mean']:.3e}, max {run[RUN]['max']:.3e}; floor "
           f"(official vs official from the nudged start): mean {run[FLOOR]['mean']:.3e}, max {run[FLOOR]['max']:.3e}; "
           f"ddkit moved the images by {run['mean_abs_move_from_start']:.3e} on average from the start"
           f" → {'within' if v['run_ok'] else 'outside'} {LOOP_FACTOR}× the floor",
           f"  - control, {_control_name(m, res)}: mean |Δ pixel| to the official images {ctl[RUN]['mean']:.3e}, "
           f"max {ctl[RUN]['max']:.3e} → {'passes (the check is void)' if v['control_passed'] else 'fails, as it must'}"]
    for note in m.get("notes", []):
        out.append(f"- Note: {note}")
    return out + [""]


#: the coreset rows' score criteria (bench/parity/deepcore_pair.py), re-derived here from the numbers
SPEARMAN_MIN, FLOOR_SLACK = 0.9, 0.05
#: what the accuracy cell of a coreset row compares where the two sides' default picks differ by design
CORESET_VS = {"herding": "DeepCore's default picks: its argmax (note (3))",
              "kcenter": "DeepCore's own first centres (note (4))", "forgetting": "different runs (note (5))"}
CORESET_NAMES = {"grand": "GraNd", "entropy": "Entropy (uncertainty)", "herding": "Herding",
                 "kcenter": "k-center greedy", "forgetting": "Forgetting"}


def coreset_check(key: str, r: Dict[str, Any]) -> Dict[str, Any]:
    """The score/selection criterion of one coreset row: passed (True/False/None = pending) and its text."""
    if key in ("grand", "entropy"):
        ok = r["spearman"] >= SPEARMAN_MIN
        return {"pass": ok, "text": f"Spearman {r['spearman']:.4f} (≥ {SPEARMAN_MIN} on the same network)"}
    if key in ("herding", "kcenter"):
        extra = "argmin" if key == "herding" else "start"
        j = r.get(f"jaccard_deepcore_{extra}")
        how = ("DeepCore's loop with the nearest-point metric" if key == "herding"
               else "DeepCore started at ddkit's first centre")
        if j is None:
            return {"pass": None, "text": f"{how}: not run"}
        return {"pass": j == 1.0, "text": f"Jaccard {j:.2f} with {how} (= 1 required)"}
    sp, fl = r.get("spearman_learned_only"), r.get("floor_spearman")
    if fl is None:
        return {"pass": None, "text": f"Spearman {sp:.3f} (learned samples); floor not run yet"}
    return {"pass": sp >= fl - FLOOR_SLACK,
            "text": f"Spearman {sp:.3f} (samples ddkit saw learned) vs floor {fl:.3f} (DeepCore vs DeepCore, "
                    f"another batch order; ≥ floor − {FLOOR_SLACK} required)"}


def coreset_rows(m: Dict[str, Any], res: Dict[str, Any]) -> List[str]:
    """One row per coreset method of a DeepCore pair: score criterion, selection overlap, accuracy of both picks."""
    repo = f"{m['repo']}@{m['commit']}"
    if not res.get("methods"):
        return [f"| {m['name']} | {repo} | IPC {ipc} | not run ({m['not_run']}) | | | | | | | |" for ipc in m["ipcs"]]
    out = []
    for key, r in res["methods"].items():
        c, acc_ = coreset_check(key, r), r.get("accuracy", {})
        same = r["jaccard"] == 1.0
        dd, dc = acc_.get("ddkit"), acc_.get("deepcore")
        v = acc_.get("verdict")
        word = {True: "pass", False: "**fail**", None: "pending"}[c["pass"]]
        judged = ("same set (Jaccard 1.00)" if same and dd else pf(v, {"official": dc, "ddkit": dd}, res["seeds"])
                  if v else "not judged yet")
        vs = f" vs {CORESET_VS[key]}" if key in CORESET_VS and not same and v else ""
        cell = f"{word}: {c['text']}; accuracy{vs} {judged}"
        if acc_.get("ddkit_never_learned_zero"):  # the forgetting control: DeepCore's never-learned convention
            nl, vn = acc_["ddkit_never_learned_zero"], acc_.get("verdict_never_learned_zero")
            cell += (f"; control, ddkit's scores with never-learned = 0 (DeepCore's convention): {acc(nl)}"
                     + (f", Δ to DeepCore {delta(vn)} {pf(vn, {'official': dc, 'ddkit': nl}, res['seeds'])}"
                        if vn else ""))
        secs = r["seconds"]
        out.append(" | ".join([f"| {m['name']}: {CORESET_NAMES.get(key, key)}", repo, res["settings"][key],
                               "— (no evaluator for a given subset)", acc(dc if not same else dd), acc(dd), "—",
                               f"{delta(v)}; Jaccard of the picks {r['jaccard']:.2f}", "—", cell,
                               f"whole selection {secs['deepcore']:.1f} s vs {secs['ddkit']:.1f} s (one run each "
                               "on shared cores; not a speed measurement)"]) + " |")
    return out


def coreset_details(m: Dict[str, Any], res: Dict[str, Any]) -> List[str]:
    if not res.get("methods"):
        return []
    mach = res["machine"]
    out = [f"### {m['name']}", "", f"- Official: {res['official']}; edits: {res['edits']}",
           f"- Run: `{res['command']}` (ddkit {res['revision']}, written {res['written']}; "
           f"{_machine(mach)}; torch {res['torch']}).", f"- Data: {res['data']}.", f"- Network: {res['network']}.",
           f"- Judge: {res['judge']}."]
    for key, r in res["methods"].items():
        skip = ("accuracy", "seconds", "pass", "train_acc_ddkit")
        facts = ", ".join(f"{k} {v}" for k, v in r.items() if k not in skip)
        out.append(f"- {CORESET_NAMES.get(key, key)}: {facts}.")
        for side in ("ddkit", "deepcore", "ddkit_never_learned_zero"):
            cell = r.get("accuracy", {}).get(side)
            if cell:
                out.append(f"  - {side} picks, ddkit judge, per seed: "
                           + ", ".join(f"{x:.2f}" for x in cell["per_seed"]))
    for note in m.get("notes", []):
        out.append(f"- Note: {note}")
    return out + [""]


def render(root: Path = ROOT) -> str:
    plan = json.loads((root / PLAN).read_text())
    lines = [INTRO, HEADER, "|" + "---|" * HEADER.count(" | ") + "---|"]
    found = []
    for m in plan["methods"]:
        loop = m.get("kind") == "recover loop"
        p = root / (m["result"] if loop else f"bench/results/parity_{m['key']}.json")
        res = json.loads(p.read_text()) if p.is_file() else {}
        lines += (loop_rows(m, res) if loop else coreset_rows(m, res) if m.get("kind") == "coresets"
                  else method_rows(m, res))
        found.append((m, res))
    lines += ["", "## Details of the measured rows", ""]
    for m, res in found:
        kind = m.get("kind")
        lines += (loop_details(m, res) if kind == "recover loop" else coreset_details(m, res) if kind == "coresets"
                  else details(m, res))
    return "\n".join(lines).rstrip() + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when the page differs from the rendering")
    ap.add_argument("--root", type=Path, default=ROOT)
    a = ap.parse_args(argv)
    text = render(a.root)
    page = a.root / DOC
    if a.check:
        old = page.read_text() if page.is_file() else ""
        if old != text:
            sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), text.splitlines(True), DOC, "rendered"))
            return 1
        return 0
    page.write_text(text)
    print(f"wrote {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
