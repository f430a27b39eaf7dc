"""Reports: markdown tables and accuracy formatting shared by the demo, evaluator summaries and benches."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, List, Sequence

from ddkit.evaluate.metrics import mean_std


def fmt_acc(values: Sequence[float] | float, digits: int = 1) -> str:
    """'48.7 ± 0.2' (percent) from fractions; a single value prints without ±."""
    if isinstance(values, (int, float)):
        return f"{100 * values:.{digits}f}"
    m, s, _ = mean_std(values)  # population std (ddof 0), as the peers report
    if math.isnan(m):
        return "–"
    return f"{100 * m:.{digits}f} ± {100 * s:.{digits}f}" if len(values) > 1 else f"{100 * m:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(str(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    for r in rows:
        lines.append("| " + " | ".join(str(x) for x in r) + " |")
    return "\n".join(lines)


def write_markdown(path: str | Path, title: str, sections: List[tuple[str, str]]) -> Path:
    """Write `# title` then `## heading` + body for each section."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}", ""]
    for head, body in sections:
        parts += [f"## {head}", "", body, ""]
    path.write_text("\n".join(parts))
    return path
