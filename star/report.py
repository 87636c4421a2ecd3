"""Turning run outputs into tables: for now, the per-iteration table a run prints at its end.

    print(iteration_table(history))   # history: one metrics.json dict per iteration
"""

from __future__ import annotations


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:5.1f}"


def _secs(x) -> str:
    return "-" if x is None else f"{x:6.1f}"


def iteration_table(history: list[dict]) -> str:
    """A Markdown table: iteration, solve rate, rationalized, train fraction, dev accuracy
    overall and per class, and stage times (seconds)."""
    classes = sorted({k.split("/", 2)[2] for h in history for k in h if k.startswith("eval/accuracy/")},
                     key=lambda c: (len(c), c))
    stages = ("generate", "rationalize", "train", "eval")
    header = (["iter", "solve %", "rationalized %", "train data %", "dev acc %"]
              + [f"dev {c} %" for c in classes] + [f"{s} s" for s in stages])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for h in history:
        cells = [str(h["iteration"]), _pct(h.get("gen/solve_rate")), _pct(h.get("gen/rationalized_rate")),
                 _pct(h.get("data/train_fraction")), _pct(h.get("eval/accuracy"))]
        cells += [_pct(h.get(f"eval/accuracy/{c}")) for c in classes]
        cells += [_secs(h.get(f"time/{s}_s")) for s in stages]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
