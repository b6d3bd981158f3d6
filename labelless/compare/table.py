"""The comparison table: a pure function of the cell results, and its three files.

:func:`aggregate` takes the list of cell results (``cells.load_cell``: ``{cell, method,
preset, benchmark, status, error, settings, results}``) and returns the table as plain
data; :func:`write_table` writes it as ``compare.md``, ``compare.json`` and
``compare.png`` (a grouped bar chart, matplotlib's Agg canvas, no pyplot state).

Choices made here:

- rows are (method, preset) in the order the cells come (methods, then presets), columns
  the benchmarks, then **average**: the plain mean of the row's mIoUs, only when every
  benchmark of the row is done (a mean over some of them would not compare with the
  others); a failed cell shows ``failed``, one not run ``—``;
- a cell's **settings** are what its ``results.json`` records (every key but the metrics,
  per-class values and the list of skipped images: model, mode, protocol with short side,
  window and stride, templates, synonyms, background threshold, and whatever eval adds,
  e.g. preset or refinement); a setting eval does not record (``logit_scale``,
  ``preset``, ``refine``) is taken from the cell's eval arguments;
- a **column**'s settings are those equal in all its done cells.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from labelless.fileio import atomic_path, atomic_write_text

METRICS = ("mIoU", "pAcc", "mAcc", "fwIoU")
NOT_SETTINGS = set(METRICS) | {"per_class", "per_class_acc", "num_pixels", "skipped", "num_skipped", "seconds"}
FROM_ARGUMENTS = ("logit_scale", "preset", "refine")  # taken from the eval arguments when results.json lacks them


def _number(v) -> float | None:
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v)


def cell_settings(cell: dict) -> dict:
    """The settings of one done cell (module docstring): results.json first."""
    results = cell.get("results") or {}
    args = cell.get("settings") or {}
    out = {k: args[k] for k in FROM_ARGUMENTS if k in args}
    out.update({k: v for k, v in results.items() if k not in NOT_SETTINGS})
    return out


def _cell_entry(cell: dict) -> dict:
    results = cell.get("results") or {}
    done = cell["status"] == "done"
    return {"cell": cell["cell"], "method": cell["method"], "preset": cell["preset"], "benchmark": cell["benchmark"],
            "status": cell["status"], "error": cell.get("error"),
            "metrics": {k: _number(results.get(k)) for k in METRICS} if done else None,
            "per_class": results.get("per_class") if done else None,
            "num_images": results.get("num_images") if done else None,
            "settings": cell_settings(cell) if done else None, "arguments": cell.get("settings")}


def _row(key: tuple[str, str], entries: dict, benchmarks: list[str]) -> dict:
    method, preset = key
    values, status = {}, {}
    for b in benchmarks:
        e = entries.get((method, preset, b))
        status[b] = e["status"] if e else "not run"
        values[b] = e["metrics"]["mIoU"] if e and e["status"] == "done" else None
    complete = all(v is not None for v in values.values())
    average = sum(values.values()) / len(values) if complete and values else None
    return {"method": method, "preset": preset, "mIoU": values, "status": status, "average": average}


def _column(benchmark: str, entries: list[dict]) -> dict:
    done = [e["settings"] for e in entries if e["benchmark"] == benchmark and e["status"] == "done"]
    if not done:
        return {}
    return {k: v for k, v in done[0].items() if all(k in s and s[k] == v for s in done[1:])}


def aggregate(cells: list[dict], title: str = "labelless compare") -> dict:
    """The table of ``cells`` (module docstring): ``{title, benchmarks, rows, columns, cells}``;
    ``rows[i]["mIoU"][benchmark]`` is the cell's results.json mIoU (None unless done)."""
    entries = [_cell_entry(c) for c in cells]
    benchmarks = list(dict.fromkeys(e["benchmark"] for e in entries))
    keys = list(dict.fromkeys((e["method"], e["preset"]) for e in entries))
    by_key = {(e["method"], e["preset"], e["benchmark"]): e for e in entries}
    counts = {s: sum(e["status"] == s for e in entries) for s in ("done", "failed", "not run")}
    return {"title": title, "benchmarks": benchmarks, "counts": counts,
            "rows": [_row(k, by_key, benchmarks) for k in keys],
            "columns": {b: _column(b, entries) for b in benchmarks}, "cells": entries}


# ------------------------------------------------------------------------ markdown


def _fmt(v) -> str:
    return "—" if v is None else f"{v:.2f}"


def _md(v) -> str:
    if isinstance(v, dict):
        v = ", ".join(f"{k}={x}" for k, x in v.items() if x is not None) or "—"
    elif isinstance(v, float):
        v = f"{v:g}"
    return "—" if v is None or v == "" else str(v).replace("|", "\\|").replace("\n", " ")


def _protocol(s: dict) -> dict:
    p = s.get("protocol")
    return p if isinstance(p, dict) else {"name": p}


def _window(s: dict) -> str:
    p = _protocol(s)
    return f"{p.get('input_size')} / {p.get('stride')}" if p.get("name") == "slide" else _md(p.get("input_size"))


SETTING_COLUMNS = (  # (header, how to read it from a cell's settings)
    ("model", lambda s: s.get("model")), ("pretrained", lambda s: s.get("pretrained")),
    ("mode", lambda s: s.get("mode")), ("protocol", lambda s: _protocol(s).get("name")),
    ("short side", lambda s: _protocol(s).get("short_side")), ("window / stride", _window),
    ("templates", lambda s: s.get("templates")), ("synonyms", lambda s: s.get("synonyms")),
    ("logit scale", lambda s: s.get("logit_scale")), ("bg threshold", lambda s: s.get("bg_threshold")),
    ("refine", lambda s: s.get("refine")), ("preset", lambda s: s.get("preset")),
)


def _cell_text(row: dict, b: str) -> str:
    return {"done": _fmt(row["mIoU"][b]), "failed": "failed"}.get(row["status"][b], "—")


def format_markdown(table: dict) -> str:
    """compare.md: the mIoU table, every cell's settings, the failed cells' errors."""
    bs, c = table["benchmarks"], table["counts"]
    summary = (f"mIoU (%) per benchmark; average over the benchmarks when all of a row's are done. "
               f"Cells: {c['done']} done, {c['failed']} failed, {c['not run']} not run.")
    lines = [f"# {table['title']}", "", summary, "",
             "| method | preset | " + " | ".join(bs) + " | average |",
             "|:---|:---|" + "---:|" * (len(bs) + 1)]
    for r in table["rows"]:
        lines.append(f"| {_md(r['method'])} | {_md(r['preset'])} | "
                     + " | ".join(_cell_text(r, b) for b in bs) + f" | {_fmt(r['average'])} |")
    lines += ["", "## Settings of every cell", "",
              "| cell | images | " + " | ".join(h for h, _ in SETTING_COLUMNS) + " |",
              "|:---|---:|" + ":---|" * len(SETTING_COLUMNS)]
    for e in table["cells"]:
        if e["status"] == "done":
            s = e["settings"]
            lines.append(f"| {_md(e['cell'])} | {_md(e['num_images'])} | "
                         + " | ".join(_md(get(s)) for _, get in SETTING_COLUMNS) + " |")
    failed = [e for e in table["cells"] if e["status"] == "failed"]
    if failed:
        lines += ["", "## Failed cells", ""] + [f"- `{e['cell']}`: {_md(e['error'])}" for e in failed]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------ chart


def _plot(table: dict, path: Path) -> None:
    """Grouped bars: one group per benchmark (and the average), one bar per row."""
    import matplotlib
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    groups = table["benchmarks"] + ["average"]
    rows = table["rows"]
    width = 0.8 / max(len(rows), 1)
    fig = Figure(figsize=(min(max(6.0, 0.35 * len(groups) * max(len(rows), 1) + 2.5), 60.0), 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(groups))
    handles = []
    colours = [f"C{i}" for i in range(10)] if len(rows) <= 10 else [matplotlib.colormaps["tab20"](i) for i in range(20)]
    for i, r in enumerate(rows):
        vals = [r["mIoU"][b] for b in table["benchmarks"]] + [r["average"]]
        xs = x - 0.4 + width * (i + 0.5)
        label = r["method"] if len({q["preset"] for q in rows}) == 1 else f"{r['method']} ({r['preset']})"
        shown = [(p, v) for p, v in zip(xs, vals) if v is not None]
        colour = colours[i % len(colours)]
        bars = ax.bar([p for p, _ in shown], [v for _, v in shown], width=width * 0.95, color=colour)
        handles.append(Patch(color=colour, label=label))  # also for a row without any bar
        if len(groups) * len(rows) <= 60:
            ax.bar_label(bars, fmt="%.1f", fontsize=6, padding=1)
        for p, b in zip(xs, table["benchmarks"]):
            if r["status"][b] == "failed":
                ax.text(p, 0.5, "failed", rotation=90, ha="center", va="bottom", fontsize=7, color="tab:red")
    ax.set_xticks(x)
    ax.set_xticklabels(groups)
    ax.set_ylabel("mIoU (%)")
    ax.set_title(table["title"], fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(handles=handles, fontsize=7, ncol=max(1, len(rows) // 8), loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_table(table: dict, out_dir) -> dict[str, Path]:
    """``compare.md``, ``compare.json`` and ``compare.png`` in ``out_dir`` (each atomic)."""
    out_dir = Path(out_dir)
    paths = {"markdown": out_dir / "compare.md", "json": out_dir / "compare.json", "plot": out_dir / "compare.png"}
    atomic_write_text(paths["markdown"], format_markdown(table))
    atomic_write_text(paths["json"], json.dumps(_jsonable(table), indent=2, ensure_ascii=False, allow_nan=False)
                      + "\n")
    _plot(table, paths["plot"])
    return paths
