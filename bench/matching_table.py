"""Render the matching-family JSON (bench/matching_grid.py, bench/matching_timing.py) as markdown tables (the first
CPU-sized run's, now in docs/results-archive.md), with the published anchors printed beside ours (numbers are read
from the files, never typed by hand). bench/results_doc.py reuses ANCHORS for docs/results.md.

    python bench/matching_table.py bench/results/matching_cifar10_cpu.json [bench/results/matching_timing_cpu.json]
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict

#: Published CIFAR-10 ConvNet-3 HL accuracies at IPC 1 / 10 / 50 (issue #12; matching-synthesis.md §1-5(e)):
#: TRUE CIFAR-10, full paper protocols — not comparable with CPU-sized runs on CIFAR-10 (JPEG q75).
ANCHORS = {"random": (14.4, 26.0, 43.4), "dc": (28.3, 44.9, 53.9), "dsa": (28.8, 52.1, 60.6),
           "dm": (26.0, 48.9, 63.0), "mtt": (46.3, 65.3, 71.6), "datm": (46.9, 66.8, 76.1)}
IPC_COL = {1: 0, 10: 1, 50: 2}


def grid_table(d: dict) -> str:
    rows: dict = defaultdict(dict)
    for c in d["cells"]:
        rows[(c["ipc"], c["method"])][c["regime"]] = f"{100 * c['mean']:.1f} ± {100 * c['std']:.1f}"
    lines = ["| method | IPC | HL (ours) | SL (ours) | published HL, true CIFAR-10 | distill s (wall) | "
             "iterations | s / iteration | seeds |", "|---|---|---|---|---|---|---|---|---|"]
    order = ["random", "kcenter", "dc", "dsa", "dm", "mtt", "datm"]
    for ipc, m in sorted(rows, key=lambda k: (k[0], order.index(k[1]) if k[1] in order else 99)):
        s = d["sets"].get(f"{m}_ipc{ipc}", {})
        anchor = ANCHORS.get(m, (None,) * 3)[IPC_COL.get(ipc, 0)] if m in ANCHORS else None
        per_it = s.get("wall_seconds_per_iteration")
        seeds = max(len(c["seeds"]) for c in d["cells"] if c["ipc"] == ipc and c["method"] == m)
        lines.append(f"| {m} | {ipc} | {rows[(ipc, m)].get('hl', '–')} | {rows[(ipc, m)].get('sl', '–')} | "
                     f"{anchor if anchor is not None else '–'} | {s.get('distill_wall_seconds') or 0:.0f} | "
                     f"{s.get('iterations_run') or '–'} | {f'{per_it:.2f}' if per_it else '–'} | {seeds} |")
    t = d.get("teacher", {})
    hdr = (f"command: `{d.get('command')}`; git {d.get('git_revision')}; {d.get('data')}; test images "
           f"{d.get('test_images')}; machine {d.get('machine', {}).get('cpu_count')} CPU cores, torch "
           f"{d.get('machine', {}).get('torch')}, {d.get('machine', {}).get('gpu', 'no GPU')}; teacher "
           f"{t.get('arch')} (test acc {t.get('test_acc')})")
    return hdr + "\n\n" + "\n".join(lines)


def timing_table(d: dict) -> str:
    lines = ["| method | classes | " + " | ".join(f"IPC {i}" for i in sorted({c['ipc'] for c in d['cells']}))
             + " |", ""]
    ipcs = sorted({c["ipc"] for c in d["cells"]})
    lines[1] = "|---|---|" + "---|" * len(ipcs)
    by = defaultdict(dict)
    for c in d["cells"]:
        by[(c["method"], c["classes"])][c["ipc"]] = f"{c['cpu_seconds_per_pass']:.2f}"
    for (m, k), v in sorted(by.items()):
        lines.append(f"| {m} | {k} | " + " | ".join(v.get(i, "–") for i in ipcs) + " |")
    return (f"CPU seconds per iteration (process time, one thread), command: `{d.get('command')}`; git "
            f"{d.get('git_revision')}\n\n" + "\n".join(lines))


if __name__ == "__main__":
    for path in sys.argv[1:]:
        data = json.load(open(path))
        print(f"`{path}`\n")
        print(timing_table(data) if data["cells"] and "cpu_seconds_per_pass" in data["cells"][0] else grid_table(data))
        print()
