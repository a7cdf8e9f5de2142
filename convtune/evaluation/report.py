"""Side-by-side reports of evaluation results: terminal table, ``metrics.json``, PNG chart."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convtune.evaluation.evaluate import LOWER_IS_BETTER, EvalResult

# Latency columns shown next to each task's metrics.
LATENCY_KEYS = ("seconds_per_item", "new_tokens_per_s")


@dataclass
class Comparison:
    """Rows ``(task, metric, base, tuned, delta)``; either side may be missing (None)."""

    base: EvalResult | None
    tuned: EvalResult | None
    rows: list[dict[str, Any]]
    baselines: Sequence[EvalResult] = ()

    def format_table(self) -> str:
        table = format_table(self.rows, base_name=_name(self.base, "base"),
                             tuned_name=_name(self.tuned, "tuned"),
                             baseline_names=[b.name for b in self.baselines])
        served = (self.tuned or self.base).settings.get("predictors") if (self.tuned or self.base) else None
        if served:
            table += "\nanswered by: " + ", ".join(f"{task} {name}" for task, name in served.items())
        return table

    def to_dict(self) -> dict[str, Any]:
        return {
            "models": {
                "base": self.base.to_dict() if self.base else None,
                "tuned": self.tuned.to_dict() if self.tuned else None,
                **{f"baseline:{b.name}": b.to_dict() for b in self.baselines},
            },
            "comparison": self.rows,
        }


def _name(r: EvalResult | None, default: str) -> str:
    return r.name if r is not None else default


def _value(result: EvalResult | None, task: str, metric: str) -> float | None:
    if result is None or task not in result.tasks:
        return None
    t = result.tasks[task]
    v = t.metrics.get(metric, t.latency.get(metric))
    return None if v is None else float(v)


def compare(base: EvalResult | None, tuned: EvalResult | None,
            baselines: Sequence[EvalResult] = ()) -> Comparison:
    """Every task's metrics, the parse-failure rate and latency, base next to tuned (and the
    cheap baselines' metrics where they answer the task)."""
    if base is None and tuned is None:
        raise ValueError("nothing to compare")
    tasks = list(dict.fromkeys([*(tuned.tasks if tuned else {}), *(base.tasks if base else {})]))
    rows = []
    for task in tasks:
        ref = (tuned or base).tasks.get(task) or (base or tuned).tasks[task]
        primary = ref.primary_metric
        metric_names = [m for m in ref.metrics if m not in ("n", "parse_failure_rate")]
        metric_names.sort(key=lambda m: m != primary)  # primary metric first
        for metric in [*metric_names, "parse_failure_rate", *LATENCY_KEYS]:
            b, t = _value(base, task, metric), _value(tuned, task, metric)
            delta = t - b if b is not None and t is not None else None
            rows.append({
                "task": task, "metric": metric, "primary": metric == primary,
                "n": int(ref.metrics.get("n", 0)),
                "base": b, "tuned": t, "delta": delta,
                "better": _better(metric, delta),
                "baselines": {x.name: _value(x, task, metric) for x in baselines
                              if metric not in LATENCY_KEYS},
            })
    return Comparison(base, tuned, rows, baselines)


def _better(metric: str, delta: float | None) -> str | None:
    if delta is None or not math.isfinite(delta) or abs(delta) < 1e-12:
        return None
    lower = metric in LOWER_IS_BETTER
    return "tuned" if (delta < 0) == lower else "base"


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if not math.isfinite(v):
        return str(v)
    return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"


def format_table(rows: Sequence[dict[str, Any]], *, base_name: str = "base",
                 tuned_name: str = "tuned", baseline_names: Sequence[str] = ()) -> str:
    """A plain-text table; the primary metric of each task is marked with ``*``."""
    header = ["task", "metric", base_name, tuned_name, *baseline_names, "delta", ""]
    body = []
    last_task = None
    for r in rows:
        task = r["task"] if r["task"] != last_task else ""
        last_task = r["task"]
        delta = "-" if r["delta"] is None else f"{r['delta']:+.3f}"
        mark = {"tuned": "better", "base": "worse"}.get(r.get("better") or "", "")
        extra = [_fmt((r.get("baselines") or {}).get(n)) for n in baseline_names]
        body.append([task, r["metric"] + (" *" if r.get("primary") else ""),
                     _fmt(r["base"]), _fmt(r["tuned"]), *extra, delta, mark])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    aligns = ["<", "<", ">", ">", *([">"] * len(baseline_names)), ">", "<"]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(f"{c:{a}{w}}" for c, a, w in zip(cells, aligns, widths)).rstrip()

    out = [line(header), line(["-" * w for w in widths])]
    out += [line(b) for b in body]
    out.append("* primary metric; delta = tuned - base; latency in seconds per conversation-task")
    return "\n".join(out)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_metrics_json(path: str | Path, comparison: Comparison, *,
                       extra: dict[str, Any] | None = None) -> Path:
    """``metrics.json``: settings, both models' per-task metrics and latency, and the comparison rows."""
    from convtune import __version__

    payload = {"convtune_version": __version__, **(extra or {}), **comparison.to_dict()}
    path = Path(path)
    _atomic_write(path, (json.dumps(payload, indent=2, default=str) + "\n").encode())
    return path


def write_predictions(path: str | Path, results: Sequence[EvalResult]) -> Path:
    """``predictions.jsonl``: one record per (model, conversation, task) with the raw output."""
    lines = [json.dumps(rec, ensure_ascii=False, default=str) for r in results for rec in r.records]
    path = Path(path)
    _atomic_write(path, ("\n".join(lines) + ("\n" if lines else "")).encode())
    return path


def plot_comparison(path: str | Path, comparison: Comparison) -> Path:
    """PNG: per task, its primary metric and parse-failure rate (base vs tuned), plus latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = comparison.rows
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    panels: list[tuple[str, list[dict[str, Any]]]] = []
    for task in tasks:
        picked = [r for r in rows
                  if r["task"] == task and (r["primary"] or r["metric"] == "parse_failure_rate")]
        panels.append((task, picked))
    panels.append(("latency (s per item)", [
        {**r, "metric": r["task"]} for r in rows if r["metric"] == "seconds_per_item"
    ]))
    sides = [(k, _name(getattr(comparison, k), k)) for k in ("base", "tuned") if getattr(comparison, k)]
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    width = 0.8 / max(1, len(sides))
    colors = {"base": "#9aa5b1", "tuned": "#2f6fb0"}
    for ax, (title, prs) in zip(axes.flat, panels):
        labels = [r["metric"] for r in prs]
        for i, (key, shown) in enumerate(sides):
            vals = [r[key] if r[key] is not None else 0.0 for r in prs]
            xs = [x + (i - (len(sides) - 1) / 2) * width for x in range(len(prs))]
            bars = ax.bar(xs, vals, width, label=shown, color=colors[key])
            ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
        ax.set_xticks(range(len(prs)), labels, fontsize=8, rotation=15)
        ax.set_title(title, fontsize=10)
        shown_vals = [r[k] for r in prs for k, _ in sides if r[k] is not None]
        if title in tasks and shown_vals and all(0 <= v <= 1 for v in shown_vals):
            ax.set_ylim(0, 1.12)
        ax.tick_params(axis="y", labelsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="upper center", ncol=len(sides), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (3.4 * nrows)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_report(out_dir: str | Path, base: EvalResult | None, tuned: EvalResult | None, *,
                 extra: dict[str, Any] | None = None, chart: bool = True,
                 baselines: Sequence[EvalResult] = ()) -> dict[str, Path]:
    """Write ``metrics.json``, ``predictions.jsonl`` and ``metrics.png`` into ``out_dir``."""
    out = Path(out_dir)
    comparison = compare(base, tuned, baselines)
    paths = {
        "metrics": write_metrics_json(out / "metrics.json", comparison, extra=extra),
        "predictions": write_predictions(out / "predictions.jsonl", [r for r in (base, tuned) if r]),
    }
    if chart:
        paths["chart"] = plot_comparison(out / "metrics.png", comparison)
    return paths
