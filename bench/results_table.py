"""Render bench/results/*.json into the markdown tables of docs/results.md (numbers are never typed by hand).

    python bench/results_table.py bench/results/accuracy_cifar10_cpu.json [more.json …]
prints, per file, a table method/IPC × regime with last-epoch accuracy mean ± std over seeds.
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict

REG = {"hl": "HL", "sl": "SL", "slkd": "SL+KD"}


def table(path: str) -> str:
    d = json.load(open(path))
    cells = d["cells"]
    regimes = [r for r in ("hl", "sl", "slkd") if any(c["regime"] == r for c in cells)]
    rows: dict = defaultdict(dict)
    extra: dict = {}
    for c in cells:
        rows[c["set"]][c["regime"]] = f"{100 * c['mean']:.1f} ± {100 * c['std']:.1f}"
        extra[c["set"]] = (c["method"], c["ipc"], c.get("distill_seconds"), c["plan"], len(c["seeds"]))
    order = sorted(rows, key=lambda s: (extra[s][1], extra[s][0], s))
    head = "| set | IPC | " + " | ".join(REG[r] for r in regimes) + " | distill s | student iters × batch | seeds |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for s in order:
        m, ipc, secs, plan, n = extra[s]
        lines.append(f"| {s} | {ipc} | " + " | ".join(rows[s].get(r, "–") for r in regimes)
                     + f" | {secs:.0f} | {plan['iterations']} × {plan['batch_size']} | {n} |")
    t = d.get("teacher", {})
    hdr = (f"`{path}` — last command: `{d.get('command')}`; git {d.get('git_revision')}; machine: "
           f"{d.get('machine', {}).get('cpu_count')} CPU cores, torch {d.get('machine', {}).get('torch')}, "
           f"{d.get('machine', {}).get('gpu', 'no GPU')}; teacher {t.get('arch')} (test acc {t.get('test_acc')}, "
           f"sanity sample acc {t.get('sanity_acc')})")
    return hdr + "\n\n" + "\n".join(lines)


if __name__ == "__main__":
    print("\n\n".join(table(p) for p in sys.argv[1:]))
