"""docs/results.md's section on the two evaluation protocols (issue #26), from bench/results/protocol_gap_*.json.

Rendered by bench/results_doc.py; the numbers come from `bench/protocol_gap.py` only.
"""
from __future__ import annotations

from typing import Any, List

from results_table import Cell, fmt, fmt_gap, md_table  # noqa: E402  (bench/ is not a package)

PROTOCOL_GAP = "bench/results/protocol_gap_mtt_datm_cpu.json"


def _cell(r: Any) -> Cell:
    return Cell(100 * r["mean"], 100 * r["std"], tuple(100 * a for a in r["accs"]), tuple(r["seeds"]))


def protocol_section(src: Any) -> List[str]:
    """MTT / DATM natively vs under hard-truths: the same set, two protocols."""
    data = src.json(PROTOCOL_GAP)
    rows, gaps = [], []
    by = {(r["method"], r["protocol"]): r for r in data["rows"]}
    for (m, p), r in by.items():
        d = _cell(r["distilled"])
        took = r["resolved"]
        what = (f"`{r['recipe']}`, {r['regime'].upper()}, {r['epochs']:g} ep × bs {r['batch_size']}, "
                f"{'ZCA' if took['inputs'] == 'zca' else 'mean/std'} inputs, lr {took['lr'] or 'recipe'}"
                + (f", labels soft[{took['sl_labels']}]" if took.get("sl_labels") else ""))
        rows.append([m, p, what, fmt(d)])
    for m in dict.fromkeys(r["method"] for r in data["rows"]):
        if (m, "native") in by and (m, "hard-truths") in by:
            a, b = _cell(by[(m, "native")]["distilled"]), _cell(by[(m, "hard-truths")]["distilled"])
            gaps.append(f"{m} native − hard-truths {fmt_gap(a, b)} points")
    lines = ["## One set, two protocols: MTT and DATM (issue #26)", "",
             f"`{PROTOCOL_GAP}`: {data['what']}. {data['data']}; {data['expert_buffer']}. Headline: "
             f"{data['headline']}. `ddkit evaluate --protocol native` trains each set as its paper does (what it "
             "took from the set is in the protocol column); `--protocol hard-truths` is the study's one protocol "
             "for every set. No random baseline was run here (CPU): the tests check that it follows the set's "
             "protocol.", ""]
    lines += md_table(["method", "protocol", "what ran", "accuracy %"], rows)
    lines += ["", "Between protocols, the same set: " + ("; ".join(gaps) or "not both measured yet") + ".", ""]
    return lines
