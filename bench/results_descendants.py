"""docs/results.md section for issue #28: the SRe2L descendants (CV-DD, WMDD, DELT, FADRM, FADRM+, SRe2L++) beside
random, RDED, LIC and SRe2L under the hard-truths protocol, and under their own native protocol.

Read from bench/results/descendants_cifar10_cpu.json (bench/descendants.py). The hard-truths rows of random, RDED,
LIC and SRe2L are the hard-truths study's cells with the same teacher, student, seeds, epochs and student path
(bench/results/synthesis_official_cifar10_cpu: `before_ipc10` for random / RDED / LIC, `after_ipc10` for SRe2L with
the official recover objective at the same 500-step budget). Native rows carry their own random subset trained
under the same resolved protocol. Gaps follow the page's 2σ rule.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from results_table import Cell, compare, fmt, fmt_gap, md_table

DESC = "bench/results/descendants_cifar10_cpu.json"
BEFORE = "bench/results/synthesis_official_cifar10_cpu/before_ipc10/results.csv"
AFTER = "bench/results/synthesis_official_cifar10_cpu/after_ipc10/results.csv"
NAMES = {"sre2lpp": "SRe2L++", "cvdd": "CV-DD", "wmdd": "WMDD", "delt": "DELT", "fadrm": "FADRM",
         "fadrm+": "FADRM+", "gvbsm": "G-VBSM", "edc": "EDC"}
#: published ImageNet-1K ResNet-18 IPC 10, another dataset, an anchor only (../shared/reference/largescale-methods.md:
#: FADRM/FADRM+ README §8, CV-DD / SRe2L++ README §7, DELT README §3, WMDD as in CIM's table §6, G-VBSM README §1,
#: EDC as in FADRM's table §2)
ANCHORS = {"fadrm+": "50.0", "fadrm": "47.7", "cvdd": "46.0", "delt": "45.8", "wmdd": "38.2", "sre2lpp": "43.1",
           "gvbsm": "31.4", "edc": "48.6"}


def _cell(d: Optional[Dict[str, Any]]) -> Optional[Cell]:
    if not d:
        return None
    return Cell(100 * d["mean"], 100 * d["std"], tuple(100 * a for a in d["accs"]), tuple(d["seeds"]))


def _budget(row: Dict[str, Any]) -> str:
    """The recover budget the set recorded, in a few words."""
    r = row["set"]["recover"]
    steps = r.get("total_iterations") or r.get("iterations")
    who = r.get("teachers")
    return f"{steps} steps" + (f", {len(who)} teachers" if who and len(who) > 1 else "")


def descendants_section(src: Any) -> List[str]:
    """The table of the descendants under hard-truths SL+KD / HL and natively, with the references beside."""
    lines = ["## SRe2L descendants: CV-DD, WMDD, DELT, FADRM, FADRM+, SRe2L++, G-VBSM, EDC (issue #28)", ""]
    try:
        d = src.json(DESC)
    except FileNotFoundError:
        return lines + [f"Not yet measured (`{DESC}`).", ""]
    ref = {**src.cells(BEFORE), **{k: v for k, v in src.cells(AFTER).items() if k[0] == "sre2l"}}
    rnd = {g: ref.get(("random", 10, g)) for g in ("hl", "slkd")}
    by = {(r["method"], r["judge"]): r for r in d["rows"]}

    def ht(c: Optional[Cell], g: str) -> str:
        if c is None:
            return "–"
        return f"{fmt(c)} ({fmt_gap(c, rnd[g])})" if rnd[g] and c is not rnd[g] else fmt(c)

    rows = []
    verdicts: Dict[str, Dict[str, List[str]]] = {}  # judge -> verdict against random -> methods

    def judged(judge: str, name: str, c: Optional[Cell], ref: Optional[Cell]) -> None:
        if c is not None and ref is not None:
            verdicts.setdefault(judge, {}).setdefault(compare(c, ref), []).append(name)

    for m, name in (("random", "random"), ("rded", "RDED"), ("lic", "LIC"), ("sre2l", "SRe2L")):
        rows.append([name, "study cell", ht(ref.get((m, 10, "slkd")), "slkd"), ht(ref.get((m, 10, "hl")), "hl"),
                     "–", "–"])
    notes: List[str] = []  # what a row's protocol was when it ran, where the recipe has changed since
    for m, name in NAMES.items():
        got = {j: by.get((m, j)) for j in ("ht-slkd", "ht-hl", "native")}
        any_row = next((r for r in got.values() if r), None)
        if any_row is None:
            planned = any(f"--method {m} " in c for c in d.get("commands", []))
            state = "not finished" if planned else "not in this run"
            rows.append([name, state, "–", "–", "–", ANCHORS.get(m, "–")])
            continue
        nat = got["native"]
        for j, g in (("ht-slkd", "slkd"), ("ht-hl", "hl")):
            if got[j]:
                judged(f"hard-truths {g.upper().replace('SLKD', 'SL+KD')}", name, _cell(got[j]["distilled"]), rnd[g])
        if nat and nat.get("protocol_note"):
            notes.append(f"- {name}, native protocol: {nat['protocol_note']}")
        if nat:
            a, ra = _cell(nat["distilled"]), _cell(nat.get("random"))
            judged("native", name, a, ra)
            native = f"`{nat['recipe']}`: {fmt(a)}" + (f" vs random {fmt(ra)} ({fmt_gap(a, ra)})" if ra else "")
        else:
            native = "not finished"
        rows.append([name, _budget(any_row),
                     ht(_cell(got["ht-slkd"]["distilled"]), "slkd") if got["ht-slkd"] else "not finished",
                     ht(_cell(got["ht-hl"]["distilled"]), "hl") if got["ht-hl"] else "not finished",
                     native, ANCHORS.get(m, "–")])
    lines += [f"`{DESC}` (`bench/descendants.py`; commands, code revision {d.get('code_revision', '?')} and machine "
              "there): CIFAR-10 (JPEG q75), IPC 10, every set recovered through the committed ConvNet-3-BN teacher "
              "(83.89 %; CV-DD and FADRM+ take it and its 8-epoch checkpoint as their two voters, equal weights: no "
              "prior accuracies exist for these teachers; G-VBSM and EDC take the same two in turn), at SRe2L's "
              "study budget (500 Adam steps per batch; FADRM 4 stages × 125; DELT 8 rounds of 60; EDC its own "
              "CIFAR-10 75). ConvNet-3-BN students (the teacher's architecture), 3 seeds, last-epoch test accuracy % "
              "(mean ± std), the fast student path; the gap to random in parentheses (hard-truths: the study's "
              "random cell of the same regime; native: random trained under the same native recipe). The last "
              "column is the published ImageNet-1K ResNet-18 IPC 10 accuracy — another dataset, an anchor only.", ""]
    lines += md_table(["method", "recover", "hard-truths SL+KD", "hard-truths HL", "native protocol",
                       "IN-1K R18 IPC 10 (published)"], rows)
    lines += [""] + [f"- Against random, {j} (the 2σ rule): "
                     + "; ".join(f"{v} {', '.join(ns)}" for v, ns in sorted(by_v.items())) + "."
                     for j, by_v in verdicts.items()] + notes
    return lines + [""]
