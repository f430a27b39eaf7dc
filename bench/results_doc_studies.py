"""docs/results.md sections of issue #29's studies: cross-architecture matrix, efficiency, continual learning.

Read by bench/results_doc.py (kept apart so that file stays small). Every number comes from the JSON files
bench/collect_studies.py wrote from the study folders; the tie rule is the page's (bench/results_table.py).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence, Tuple

from results_table import Cell, compare, fmt, fmt_gap, md_table

CROSSARCH = "bench/results/crossarch_cifar10_cpu.json"
CONTINUAL = "bench/results/continual_cifar10_cpu.json"
EFFICIENCY = ("bench/results/efficiency_cifar10_cpu.json",  # both observers in one study folder
              "bench/results/efficiency_mtt_cifar10_cpu.json",  # MTT at its CPU preset (then out of memory)
              "bench/results/efficiency_mtt_official_b16_cpu.json")  # MTT at its official settings, ConvNet-3


def _cell(r: Dict[str, Any]) -> Cell:
    return Cell(100 * r["mean"], 100 * r["std"], tuple(100 * a for a in r["accs"]), tuple(r["seeds"]))


def _provenance(d: Dict[str, Any]) -> str:
    revs = sorted({r["git_revision"][:7] + ("+dirty" if r["git_revision"].endswith("+dirty") else "")
                   for r in d["runs"]})
    model = d["machine"].get("model", "?")
    amx = "AMX" if "amx_tile" in d["machine"].get("flags", "") else "no AMX"
    running = sum(1 for r in d["runs"] if r.get("status"))
    cmds = "; ".join(f"`{r['command']}`" for r in d["runs"]) or "?"
    return (f"{len(d['runs'])} invocation(s) ({running} still running when collected) at git "
            f"{', '.join(revs) or '?'}, on {model} ({amx}, {d['machine'].get('nproc', '?')} cores shared with other "
            f"jobs); commands: {cmds}")


def crossarch_section(src: Any) -> List[str]:
    """The observer → verifier matrix, LIC against SRe2L per verifier by the tie rule."""
    d = src.json(CROSSARCH)
    p = d["protocol"]
    rows = d["rows"]
    verifiers = list(dict.fromkeys(r["verifier"] for r in rows))
    by = {(r["method"], r["observer"], r["verifier"]): _cell(r) for r in rows}
    pairs = list(dict.fromkeys((r["method"], r["observer"]) for r in rows))
    out = ["## Cross-architecture transfer (issue #29)", "",
           f"`ddkit study cross-arch`, CIFAR-10 (JPEG q75), IPC {p['ipc']}, recipe `{p['recipe']}`, regime "
           f"{p['regime']} (the observer's teacher labels the views), {p['epochs']} student epochs (CPU-sized; the "
           f"papers train hundreds), students scored on {p['test'].get('images', 'all')} test images "
           f"({p['test'].get('per_class', 'all')} per class, seed 0); evaluator options {p['eval_overrides']}; "
           f"method options {p['methods_overrides']}. Observers: {p['observers']} (BatchNorm twin for SRe2L: "
           f"{p['bn_teachers']}). Last-epoch test accuracy %, mean ± std over seeds (n). "
           f"{_provenance(d)}.", ""]
    out += md_table(["method / observer"] + verifiers,
                    [[f"{m} / {o}"] + [fmt(by[(m, o, v)], seeds=True) if (m, o, v) in by else "not run"
                                       for v in verifiers] for m, o in pairs])
    out.append("")
    lic = [k for k in by if k[0] == "lic"]
    verdicts = []
    for (_, o, v) in lic:
        sre = by.get(("sre2l", o, v))
        if sre is not None:
            verdicts.append(f"{v}: LIC − SRe2L {fmt_gap(by[('lic', o, v)], sre)} → {compare(by[('lic', o, v)], sre)}")
    out += ["LIC's claim (its set transfers better across architectures than SRe2L's), cell by cell under the tie "
            "rule: " + ("; ".join(verdicts) if verdicts else "no verifier has both LIC and SRe2L yet") + ".", ""]
    if d.get("note"):
        out += [d["note"], ""]
    return out


def _median(vals: Sequence[float]) -> float:
    v = sorted(x for x in vals if isinstance(x, (int, float)) and math.isfinite(x))
    if not v:
        return float("nan")
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def efficiency_section(src: Any) -> List[str]:
    """Seconds, images/s and peak memory to make 100 images, per (method, observer), median over repetitions."""
    out = ["## Efficiency: the cost of 100 images (issue #29)", "",
           "`ddkit study efficiency`, CIFAR-10 shape (10 classes × IPC 10 = 100 images), CPU, one thread; median "
           "over interleaved repetitions (min–max in brackets). Iterative methods ran the iterations shown, not "
           "their official counts (in brackets; dm/dc/mtt run iterations + 1, their loops being inclusive): the "
           "cost is the cost of the run shown. Observers without trained weights (timing does not depend on "
           "them). Peak rise = peak RSS (VmHWM, reset per run) above the RSS before the run.", ""]
    head = ["method", "observer (net)", "options", "reps", "iterations (official)", "wall s / 100 img",
            "CPU s / 100 img", "img/s", "peak RSS MiB", "peak rise MiB"]
    for rel in EFFICIENCY:
        try:
            d = src.json(rel)
        except FileNotFoundError:
            continue
        groups: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
        for r in d["rows"]:
            groups.setdefault((r["method"], r["observer"]), []).append(r)
        table = []
        for (m, o), cell in groups.items():
            rs = [r for r in cell if r.get("status") != "failed"]  # a failed cell (#29) has a reason, no numbers
            if not rs:
                why = str(cell[-1].get("error") or "no reason recorded").replace("|", "/")
                table.append([m, f"{o} (–)", "–", "0", "–", f"failed: {why}", "–", "–", "–", "–"])
                continue

            def med(k: str, digits: int = 1) -> str:
                vals = [float(r[k]) for r in rs]
                return f"{_median(vals):.{digits}f} ({min(vals):.{digits}f}–{max(vals):.{digits}f})"
            it = rs[0].get("iterations")
            table.append([m, f"{o} ({rs[0].get('observer_net') or '–'})", f"`{rs[0].get('options') or '{}'}`",
                          str(len(rs)), "–" if it in (None, "") else f"{it} ({rs[0].get('default_iterations')})",
                          med("wall_s_per_100"), med("cpu_s_per_100"), med("images_per_s", 3),
                          med("peak_rss_mb", 0), med("peak_increase_mb", 0)])
        out += [f"`{rel}`: {_provenance(d)}.", ""] + md_table(head, table) + [""]
        if d.get("note"):
            out += [d["note"], ""]
    return out


def continual_section(src: Any) -> List[str]:
    """Accuracy on the classes seen after each of the steps, per method, random memory beside."""
    d = src.json(CONTINUAL)
    p = d["protocol"]
    rows = d["rows"]
    steps = sorted({r["step"] for r in rows})
    by = {(r["method"], r["step"]): _cell(r) for r in rows}
    seen = {r["step"]: r["classes_seen"] for r in rows}
    out = ["## Continual learning: five class-incremental steps (issue #29)", "",
           f"`ddkit study continual`, CIFAR-10 (JPEG q75), IPC {p['ipc']}, classes in {len(p['steps'])} seeded "
           f"steps {p['steps']}; at step k a {p['student'] or 'ConvNet-3 (the teacher architecture)'} student is "
           f"trained {'from scratch (GDumb, as SRe2L)' if p['mode'] == 'scratch' else 'by fine-tuning'} on the "
           f"distilled images of the classes seen only and tested on those classes' test images "
           f"({p['test'].get('per_class', 'all')} per class); recipe `{p['recipe']}`, regime {p['regime']} (the "
           f"teacher's logits restricted to the classes seen), {p['epochs']} epochs, method options "
           f"{p['method_overrides']}. Accuracy % on the classes seen, mean ± std over seeds (n); gap to random "
           f"memory by the tie rule. {_provenance(d)}.", ""]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    table = []
    for m in methods:
        cells = []
        for k in steps:
            c, ref = by.get((m, k)), by.get(("random", k))
            cells.append("not run" if c is None else fmt(c, seeds=True) + (
                "" if ref is None or m == "random" else f" {fmt_gap(c, ref)}"))
        table.append([m] + cells)
    out += md_table(["method"] + [f"step {k} ({seen[k]} classes)" for k in steps], table) + [""]
    if d.get("note"):
        out += [d["note"], ""]
    return out


def studies_sections(src: Any) -> List[str]:
    """All three sections, each only when its data is committed."""
    out: List[str] = []
    for rel, fn in ((CROSSARCH, crossarch_section), (EFFICIENCY[0], efficiency_section), (CONTINUAL, continual_section)):
        if (src.root / rel).is_file():
            out += fn(src)
    return out
