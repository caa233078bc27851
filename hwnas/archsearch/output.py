"""Search outputs: Pareto front CSV/JSON, measured points, ``best.json``, a Pareto plot and a text table.

The files are written to temporary names beside their targets and renamed into place together
(``hwnas.io.atomic_outputs``), so an interrupted run leaves neither a half-written file nor a partial set.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Callable

from hwnas.io import atomic_output, atomic_outputs
from hwnas.archsearch.loop import SearchResult


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, default=float) + "\n"


def _pct_scale(result: SearchResult) -> float:
    """Accuracies in [0, 1] are shown as percent; anything else as given."""
    vals = [p.predicted_accuracy for p in result.front] + [p.accuracy for p in result.measured]
    return 100.0 if vals and max(vals) <= 1.0 and min(vals) >= 0.0 else 1.0


def best_arch_dict(result: SearchResult) -> dict[str, Any]:
    """The content of ``best.json``: ``{"arch": {...}, "arch_id", "supernet", ...}`` (``load_arch_file`` reads it)."""
    b = result.best
    return {
        "arch": b.arch,
        "arch_id": b.arch_id,
        "supernet": result.supernet,
        "device": result.device,
        "budget_ms": result.budget_ms,
        "measured_latency_ms": b.measured_latency_ms,
        "predicted_latency_ms": b.predicted_latency_ms,
        "predicted_accuracy": b.predicted_accuracy,
        "evaluated_accuracy": b.evaluated_accuracy,
        "accuracy_source": result.accuracy_source,
        "confirmed_latency_ms": b.confirmed_latency_ms,
        "confirmed_ci95_ms": list(b.confirmed_ci_ms) if b.confirmed_ci_ms else None,
        "confirmed_within_budget": result.confirmed_within_budget,
        "latency_scale": "anchored (hwnas/devices/PROTOCOL.md)",
    }


def front_rows(result: SearchResult) -> list[dict[str, Any]]:
    """One row per predicted-front point, sorted by predicted latency."""
    rows = []
    for p in result.front:
        m = p.measured_latency_ms
        rows.append({
            "arch_id": p.arch_id,
            "predicted_accuracy": p.predicted_accuracy,
            "predicted_latency_ms": p.predicted_latency_ms,
            **{f"predicted_{k}": v for k, v in p.objectives.items()},
            "measured_latency_ms": m,
            "measured_within_budget": None if m is None else bool(m <= result.budget_ms),
            "chosen": p.arch_id == result.best.arch_id,
            "arch": p.arch,
        })  # fmt: skip
    return rows


def measured_rows(result: SearchResult) -> list[dict[str, Any]]:
    return [
        {**p.to_dict(), "within_budget": bool(p.measured_latency_ms <= result.budget_ms),
         "chosen": p.arch_id == result.best.arch_id}
        for p in result.measured
    ]  # fmt: skip


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if not rows:
        return ""
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (json.dumps(v, sort_keys=True) if isinstance(v, dict) else ("" if v is None else v)) for k, v in r.items()})
    return buf.getvalue()


def plot_front(result: SearchResult, path: str | Path) -> Path:
    """Predicted front, measured points, the budget line and the chosen arch; PNG via the Agg backend."""
    path = Path(path)
    with atomic_output(path) as tmp:
        _save_plot(result, tmp)
    return path


def _save_plot(result: SearchResult, path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: the Agg canvas, no global backend state

    scale = _pct_scale(result)
    unit = " (%)" if scale == 100.0 else ""
    fig = Figure(figsize=(7, 4.8), dpi=120)
    ax = fig.add_subplot(1, 1, 1)
    fr = sorted(result.front, key=lambda p: p.predicted_latency_ms)
    if fr:
        ax.step([p.predicted_latency_ms for p in fr], [p.predicted_accuracy * scale for p in fr], where="post",
                color="tab:blue", alpha=0.4, lw=1)
        ax.scatter([p.predicted_latency_ms for p in fr], [p.predicted_accuracy * scale for p in fr], s=16,
                   color="tab:blue", label="predicted front (predicted latency)")
    ms = result.measured
    ok = [p for p in ms if p.measured_latency_ms <= result.budget_ms]
    bad = [p for p in ms if p.measured_latency_ms > result.budget_ms]
    ok_eval = [p for p in ok if p.evaluated_accuracy is not None]
    ok_pred = [p for p in ok if p.evaluated_accuracy is None]
    if ok_eval:
        ax.scatter([p.measured_latency_ms for p in ok_eval], [p.accuracy * scale for p in ok_eval], marker="o",
                   s=36, color="tab:green", label="measured latency, evaluated accuracy")
    if ok_pred:
        ax.scatter([p.measured_latency_ms for p in ok_pred], [p.accuracy * scale for p in ok_pred], marker="o",
                   s=36, facecolors="none", edgecolors="tab:green", label="measured latency, predicted accuracy")
    if bad:
        ax.scatter([p.measured_latency_ms for p in bad], [p.accuracy * scale for p in bad], marker="x", s=36,
                   color="tab:red", label="measured, over budget")
    for p in ms:  # predicted -> measured latency of each verified arch
        ax.plot([p.predicted_latency_ms, p.measured_latency_ms], [p.predicted_accuracy * scale, p.accuracy * scale],
                color="grey", lw=0.6, alpha=0.5)
    ax.axvline(result.budget_ms, color="black", ls="--", lw=1, label=f"budget {result.budget_ms:.4g} ms")
    b = result.best
    ax.scatter([b.measured_latency_ms], [b.accuracy * scale], marker="*", s=220, color="gold", edgecolors="black",
               zorder=5, label=f"chosen {b.arch_id}")
    ax.set_xlabel(f"latency on {result.device or 'device'} (ms)")
    ax.set_ylabel(f"top-1 accuracy{unit}")
    ax.set_title(f"{result.supernet}: Pareto front for a {result.budget_ms:.4g} ms budget", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, format="png")


def format_table(result: SearchResult, max_rows: int = 12) -> str:
    """A short plain-text summary for the terminal: the choice, the measured archs, the rounds."""
    scale = _pct_scale(result)
    acc_unit = "%" if scale == 100.0 else ""
    b = result.best
    lines = [
        f"budget {result.budget_ms:.4g} ms on {result.device or 'device'} ({result.supernet}); "
        f"fastest subnet measured {result.fastest_ms:.4g} ms",
        f"chosen  {b.arch_id}: measured {b.measured_latency_ms:.4g} ms (predicted {b.predicted_latency_ms:.4g} ms), "
        f"accuracy {b.accuracy * scale:.2f}{acc_unit} ({result.accuracy_source})",
    ]
    if b.confirmed_ci_ms is not None:
        lo, hi = b.confirmed_ci_ms
        verdict = ("within the budget at its upper end" if result.confirmed_within_budget
                   else "NOT within the budget at its upper end: no candidate was")
        lines.append(f"confirmed {b.confirmed_latency_ms:.4g} ms, 95% interval {lo:.4g}-{hi:.4g} ms, in a fresh session "
                     f"({verdict}; {len(result.confirmations)} tried)")
    lines += [
        "",
        f"{'arch_id':<42} {'round':>5} {'pred ms':>9} {'meas ms':>9} {'acc' + acc_unit:>7}    ok",
    ]
    ms = sorted(result.measured, key=lambda p: (-p.accuracy, p.measured_latency_ms))
    ok = [p for p in ms if p.measured_latency_ms <= result.budget_ms]
    shown = (ok[:max_rows] + [p for p in ms if p.measured_latency_ms > result.budget_ms])[:max_rows]
    for p in shown:
        mark = "*" if p.arch_id == b.arch_id else ("y" if p.measured_latency_ms <= result.budget_ms else "n")
        src = "e" if p.evaluated_accuracy is not None else "p"
        lines.append(
            f"{p.arch_id:<42} {p.round:>5} {p.predicted_latency_ms:>9.4g} {p.measured_latency_ms:>9.4g} "
            f"{p.accuracy * scale:>7.2f} {src}  {mark}"
        )
    if len(ms) > len(shown):
        lines.append(f"... {len(ms) - len(shown)} more measured archs in measured.csv")
    lines.append("acc: e = evaluated, p = predicted (the most promising within-budget archs are evaluated); "
                 "ok: * chosen, y within budget, n over")
    lines.append("")
    lines.append(f"{'round':>5} {'evals':>7} {'evals/s':>9} {'front':>6} {'measured':>8} {'lat MAPE%':>9}  best")
    for r in result.rounds:
        mape = "-" if r.latency_mape_pct is None else f"{r.latency_mape_pct:.1f}"
        lines.append(
            f"{r.round:>5} {r.predictor_evals:>7} {r.evals_per_s:>9.0f} {r.front_size:>6} {r.n_measured:>8} {mape:>9}  "
            f"{r.best_arch_id} ({r.best_measured_latency_ms:.4g} ms)"
        )
    lines.append(
        f"wall {result.wall_s:.1f} s (search {result.search_s:.1f} s, measuring {result.measure_s:.1f} s); "
        f"{result.predictor_evals} archs predicted ({sum(r.refine_evals for r in result.rounds)} by the budget "
        f"refinement), {result.evals_per_s:.0f}/s"
    )
    return "\n".join(lines)


def write_outputs(result: SearchResult, out_dir: str | Path, *, plot: bool = True) -> dict[str, str]:
    """Write ``front.csv``, ``front.json``, ``measured.csv``, ``result.json``, ``best.json``,
    ``pareto.png`` and ``summary.txt`` under ``out_dir``; return ``{name: path}``."""
    out = Path(out_dir)
    fr, mr = front_rows(result), measured_rows(result)
    writers: dict[str, tuple[str, Callable[[], str]]] = {
        "front_csv": ("front.csv", lambda: _csv_text(fr)),
        "front_json": ("front.json", lambda: _json({"budget_ms": result.budget_ms, "supernet": result.supernet,
                                                    "device": result.device, "front": fr})),
        "measured_csv": ("measured.csv", lambda: _csv_text(mr)),
        "result_json": ("result.json", lambda: _json(result.to_dict())),
        "best_json": ("best.json", lambda: _json(best_arch_dict(result))),
        "summary": ("summary.txt", lambda: format_table(result) + "\n"),
    }  # fmt: skip
    texts = {key: (out / name, make()) for key, (name, make) in writers.items()}
    targets = [p for p, _ in texts.values()] + ([out / "pareto.png"] if plot else [])
    with atomic_outputs(*targets) as tmps:  # all files or none
        for tmp, (_, text) in zip(tmps, texts.values()):
            tmp.write_text(text, encoding="utf-8")
        if plot:
            _save_plot(result, tmps[-1])
    paths = {key: str(p) for key, (p, _) in texts.items()}
    if plot:
        paths["plot"] = str(out / "pareto.png")
    return paths


__all__ = ["best_arch_dict", "format_table", "front_rows", "measured_rows", "plot_front", "write_outputs"]
