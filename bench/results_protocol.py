"""docs/results.md section for issue #26: MTT and DATM judged natively and under the hard-truths protocol.

Read from bench/results/protocol_gap_mtt_datm_cpu.json (written by bench/protocol_gap.py). Native rows carry
their own random subset trained under the same resolved protocol (ZCA inputs, the set's learned lr); the
hard-truths rows are judged against the hard-truths study's random HL cell (same recipe, student, seeds and
student path: bench/results/synthesis_official_cifar10_cpu/before_ipc10). Gaps follow the page's 2σ rule.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from results_table import Cell, compare, fmt, fmt_gap, md_table

GAP = "bench/results/protocol_gap_mtt_datm_cpu.json"
STUDY_RANDOM = "bench/results/synthesis_official_cifar10_cpu/before_ipc10/results.csv"
NAMES = {"mtt": "MTT", "datm": "DATM"}


def _cell(d: Optional[Dict[str, Any]]) -> Optional[Cell]:
    if not d:
        return None
    return Cell(100 * d["mean"], 100 * d["std"], tuple(100 * a for a in d["accs"]), tuple(d["seeds"]))


def _how(row: Dict[str, Any]) -> str:
    """What the resolved protocol took from the set, in a few words."""
    r = row["resolved"]
    lr = f"lr {r['lr']:.4g}" if r.get("lr") else "the recipe's lr"
    labels = "learned labels" if r.get("regime") == "sl" and row["set_meta"].get("learned_labels") else \
        {"hl": "hard labels", "sl": "soft labels", "slkd": "teacher labels"}[r["regime"]]
    return (f"`{r['recipe']}`, {labels}, {'ZCA' if r['inputs'] == 'zca' else 'mean/std'} inputs, {lr}, "
            f"{row['epochs']:g} epochs, batch {row['batch_size']}")


def protocol_gap_section(src: Any) -> List[str]:
    """The MTT / DATM native-vs-hard-truths table and the sentence on the gap."""
    lines = ["## MTT and DATM: their own protocol vs the hard-truths protocol (issue #26)", ""]
    try:
        d = src.json(GAP)
    except FileNotFoundError:
        return lines + [f"Not yet measured (`{GAP}`).", ""]
    study_random = src.cells(STUDY_RANDOM).get(("random", 10, "hl"))
    rows, sentences = [], []
    by = {(r["method"], r["protocol"]): r for r in d["rows"]}
    for m in ("mtt", "datm"):
        for p in ("native", "hard-truths"):
            r = by.get((m, p))
            if r is None:
                rows.append([NAMES[m], p, "not finished", "–", "–", "–"])
                continue
            own = _cell(r["distilled"])
            ref = _cell(r.get("random")) if p == "native" else study_random
            rows.append([NAMES[m], p, _how(r), fmt(own, seeds=True), fmt(ref, seeds=True) if ref else "–",
                         fmt_gap(own, ref) if ref else "–"])
        nat, ht = by.get((m, "native")), by.get((m, "hard-truths"))
        if nat and ht:
            a, b = _cell(nat["distilled"]), _cell(ht["distilled"])
            ra = _cell(nat.get("random"))
            vs = (f"; against random it is {compare(a, ra)} natively and {compare(b, study_random)} under hard-truths"
                  if ra and study_random else "")
            moved = (f" Random moves {fmt_gap(ra, study_random)} between the same two protocols, so the native "
                     f"protocol (ZCA inputs, the lr learned with the set{', its learned labels' if m == 'datm' else ''}) is worth "
                     f"{(a.mean - b.mean) - (ra.mean - study_random.mean):+.2f} points more to the set than to "
                     "random: that part of the set's native margin comes from how it is trained, not from its images."
                     if ra and study_random else "")
            sentences.append(f"- **{NAMES[m]}**: native − hard-truths {fmt_gap(a, b)}{vs}.{moved}")
    meta = d["rows"][0]["set_meta"] if d["rows"] else {}
    lines += [f"`{GAP}` (`bench/protocol_gap.py`; commands, code revision {d.get('code_revision', '?')} and machine "
              f"there): CIFAR-10 (JPEG q75), IPC 10, MTT and DATM distilled at their CPU preset with ZCA "
              f"({meta.get('settings', {})}) on a 2-expert ZCA buffer (`ddkit experts train --preset cpu --zca "
              f"true`), ConvNet-3 students, 3 seeds, last-epoch test accuracy % (mean ± std), † fast student path. "
              "*Native* trains each set as its paper does (the set carries its ZCA transform, learned lr and, for "
              "DATM, learned labels; the test split is whitened the same way) with its random subset trained under "
              "the same resolved protocol; *hard-truths* is the one HL protocol of the study, judged against the "
              "study's random HL cell.", ""]
    lines += md_table(["method", "protocol", "what ran", "set", "random (same protocol)", "set − random"], rows)
    lines += [""] + (sentences or ["- the two protocols have not both finished yet."]) + [""]
    return lines
