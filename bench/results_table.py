"""Markdown tables of results (numbers are never typed by hand).

    python bench/results_table.py bench/results/accuracy_cifar10_cpu.json [more.json …]
prints, per file, a table method/IPC × regime with last-epoch accuracy mean ± std over seeds (the `cim`-recipe
tables now in docs/results-archive.md). The cell helpers below (`Cell`, the tie rule, formatting, `md_table`)
serve bench/results_doc.py, which renders docs/results.md from the study folders.
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple

REG = {"hl": "HL", "sl": "SL", "slkd": "SL+KD"}
EPS = 1e-9  # percent points: a gap exactly at the tie threshold stays a tie despite float rounding


@dataclass(frozen=True)
class Cell:
    """One study cell, in percent: last-epoch accuracy mean and std (ddof 0) over its seeds."""

    mean: float
    std: float
    accs: Tuple[float, ...]
    seeds: Tuple[int, ...]

    @property
    def n(self) -> int:
        """How many student seeds the cell holds."""
        return len(self.seeds)


def is_tie(gap: float, std_a: float, std_b: float) -> bool:
    """The page's one rule: a gap is a tie when |gap| <= 2 * max(std_a, std_b)."""
    return abs(gap) <= 2 * max(std_a, std_b) + EPS


def compare(a: Cell, b: Cell) -> str:
    """'above', 'below' or 'tie' for a against b by the rule; 'unjudged' when either has fewer than 2 seeds."""
    if min(a.n, b.n) < 2:
        return "unjudged"
    gap = a.mean - b.mean
    return "tie" if is_tie(gap, a.std, b.std) else ("above" if gap > 0 else "below")


def threshold(a: Cell, b: Cell) -> float:
    """The tie threshold 2 * max(std) of a pair, in points."""
    return 2 * max(a.std, b.std)


def fmt(c: Cell, seeds: bool = False, mark: str = "") -> str:
    """'mean ± std' (one seed: the accuracy alone), with a mark and optionally the seed count."""
    s = f"{c.mean:.2f} ± {c.std:.2f}" if c.n > 1 else f"{c.mean:.2f}"
    return s + mark + (f" ({c.n})" if seeds else "")


def fmt_gap(c: Cell, ref: Cell) -> str:
    """The gap to the reference cell as the rule reads it: '+6.37', 'tie (+0.29)', or '(+3.64)' if unjudged."""
    gap, verdict = c.mean - ref.mean, compare(c, ref)
    return {"tie": f"tie ({gap:+.2f})", "unjudged": f"({gap:+.2f})"}.get(verdict, f"{gap:+.2f}")


def fmt_with_gap(c: Cell, ref: Optional[Cell]) -> str:
    """A compact family-table cell: 'mean ± std (+gap)' with the gap to random, '(tie, +gap)' for a tie."""
    if ref is None or c is ref:
        return fmt(c)
    gap, verdict = c.mean - ref.mean, compare(c, ref)
    return f"{fmt(c)} ({'' if verdict in ('above', 'below') else verdict + ', '}{gap:+.2f})"


def md_table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> List[str]:
    """A markdown table."""
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return out + ["| " + " | ".join(r) + " |" for r in rows]

def table(path: str) -> str:
    """One accuracy JSON (bench/accuracy.py) as a set × regime table under its command, revision and machine."""
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
