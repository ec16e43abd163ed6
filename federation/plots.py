"""Plots as inline SVG, drawn by matplotlib's SVG backend: the HTML report
(simulation/report.py) and the consoles embed them, so a page stays one self-contained
file (no scripts, nothing fetched; text stays text).

Each plot is an ``<svg class="plot" data-kind="line|bar" role="img" aria-label=TITLE>``;
inside, matplotlib's groups keep ids a reader or a test can find: ``series-I`` for the
I-th line, ``errorbar-I`` for its intervals, ``bar-I-J`` for series I's bar in category J.
A ``Figure`` per call and no pyplot: nothing global, safe from several threads.
"""

from __future__ import annotations

import html
import io
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#17becf", "#7f7f7f", "#bcbd22")
DPI = 96
_RC = {"svg.fonttype": "none", "svg.hashsalt": "heroes-fl", "font.size": 9,
       "axes.titlesize": 10, "axes.titleweight": "bold", "axes.spines.top": False,
       "axes.spines.right": False, "axes.grid": True, "grid.color": "#e6e6e6",
       "axes.axisbelow": True}
_PROLOGUE = re.compile(r"^.*?(?=<svg\b)", re.S)


def _wrapped(title: str, width: int) -> str:
    """The title in lines that fit the plot's width (about 7 pixels a character)."""
    import textwrap

    return textwrap.fill(title, width=max(20, width // 7))


def _figure(width: int, height: int) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")


def _svg(fig: Any, kind: str, title: str) -> str:
    """The figure as an SVG element to inline: no XML prologue or DOCTYPE, no metadata,
    our class, kind and accessible name on the root."""
    from matplotlib.backends.backend_svg import FigureCanvasSVG

    buf = io.StringIO()
    FigureCanvasSVG(fig).print_svg(buf, metadata={"Creator": None, "Date": None,
                                                   "Format": None, "Type": None})
    text = _PROLOGUE.sub("", buf.getvalue(), count=1)
    return text.replace("<svg ", f'<svg class="plot" data-kind="{kind}" role="img" '
                        f'aria-label="{html.escape(title)}" ', 1)


def line_chart(title: str, series: Sequence[Mapping[str, Any]], *, x_label: str,
               y_label: str, log_x: bool = False, width: int = 540, height: int = 320,
               y_floor: float | None = None,
               clip: tuple[float, float] | None = None) -> str:
    """Lines with markers and optional interval bars; each series: name, points
    [(x, y, lo, hi)] (lo and hi may be None), dashed. ``clip`` bounds what is drawn (an
    interval wider than the metric's range, as a t-interval over two seeds can be, is cut
    at the range; the tables keep it whole). "" when there is nothing to draw."""
    import matplotlib as mpl

    def cut(v: float | None) -> float | None:
        if v is None or clip is None:
            return v
        return min(clip[1], max(clip[0], v))

    drawn = [sorted(((p[0], cut(p[1]), cut(p[2]), cut(p[3])) for p in s["points"]
                     if p[1] is not None and math.isfinite(p[1])), key=lambda p: p[0])
             for s in series]
    if not any(drawn):
        return ""
    with mpl.rc_context(_RC):
        fig = _figure(width, height + 16 * len(series))
        ax = fig.add_subplot()
        for i, (s, pts) in enumerate(zip(series, drawn, strict=True)):
            if not pts:
                continue
            color = PALETTE[i % len(PALETTE)]
            (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                              markersize=4, linewidth=2, color=color,
                              linestyle="--" if s.get("dashed") else "-", label=s["name"])
            line.set_gid(f"series-{i}")
            bars = [(p[0], p[2], p[3]) for p in pts if p[2] is not None and p[3] is not None]
            if bars:
                lines = ax.vlines([b[0] for b in bars], [b[1] for b in bars],
                                  [b[2] for b in bars], colors=color, linewidth=1)
                lines.set_gid(f"errorbar-{i}")
        xs = sorted({p[0] for pts in drawn for p in pts})
        if log_x:
            ax.set_xscale("log")
        if log_x or len(xs) <= 8:
            ax.set_xticks(xs, [f"{x:g}" for x in xs])
            ax.minorticks_off()
        if y_floor is not None:
            ax.set_ylim(bottom=min(y_floor, ax.get_ylim()[0]))
        ax.set_title(_wrapped(title, width), loc="left")
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        fig.legend(loc="outside lower left", frameon=False, ncols=1)
        return _svg(fig, "line", title)


def bar_chart(title: str, categories: Sequence[str],
              series: Sequence[tuple[str, Sequence[float | None]]], *, y_label: str,
              width: int = 540, height: int = 320, y_floor: float | None = 0.0,
              reference: tuple[str, float] | None = None) -> str:
    """Grouped bars: one group per category, one bar per series (None or a non-finite
    value leaves a gap), the values above the bars when there are at most 24, and an
    optional dashed reference line. "" when there is nothing to draw."""
    import matplotlib as mpl

    vals = [v for _, vs in series for v in vs if v is not None and math.isfinite(v)]
    if not vals or not categories:
        return ""
    with mpl.rc_context(_RC):
        fig = _figure(width, height + 16 * len(series))
        ax = fig.add_subplot()
        group = 0.8 / len(series)
        label_values = len(categories) * len(series) <= 24
        for i, (name, vs) in enumerate(series):
            xs = [c + (i - (len(series) - 1) / 2) * group for c, v in enumerate(vs)
                  if v is not None and math.isfinite(v)]
            ys = [v for v in vs if v is not None and math.isfinite(v)]
            which = [c for c, v in enumerate(vs) if v is not None and math.isfinite(v)]
            bars = ax.bar(xs, ys, width=group * 0.92, color=PALETTE[i % len(PALETTE)],
                          label=name)
            for c, rect in zip(which, bars, strict=True):
                rect.set_gid(f"bar-{i}-{c}")
            if label_values:
                ax.bar_label(bars, fmt="%.2f", fontsize=8, padding=2)
        ax.set_xticks(range(len(categories)),
                      [c if len(c) <= 26 else c[:25] + "\u2026" for c in categories],
                      rotation=25, ha="right")
        if reference is not None:
            ax.axhline(reference[1], color="#000", linestyle=(0, (4, 3)), linewidth=1)
            ax.annotate(reference[0], xy=(1, reference[1]), xycoords=("axes fraction", "data"),
                        xytext=(-4, 3), textcoords="offset points", ha="right", fontsize=8)
        if y_floor is not None:
            ax.set_ylim(bottom=min(y_floor, min(vals)))
        ax.margins(y=0.12)
        ax.grid(axis="x", visible=False)
        ax.set_title(_wrapped(title, width), loc="left")
        ax.set_ylabel(y_label)
        fig.legend(loc="outside lower left", frameon=False, ncols=1)
        return _svg(fig, "bar", title)
