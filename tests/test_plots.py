"""federation/plots.py: matplotlib's SVG backend, inlined. Real matplotlib, parsed output."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

from federation.plots import bar_chart, line_chart

SVG = "{http://www.w3.org/2000/svg}"


def _groups(svg: str, prefix: str) -> dict[str, list[tuple[float, float]]]:
    root = ET.fromstring(svg)
    out = {}
    for g in root.iter(f"{SVG}g"):
        gid = g.get("id", "")
        if gid.startswith(prefix):
            path = g.find(f"{SVG}path")
            assert path is not None, gid
            out[gid] = [(float(x), float(y)) for x, y in
                        re.findall(r"[ML] (-?[\d.]+) (-?[\d.]+)", path.get("d", ""))]
    return out


def test_a_line_chart_is_one_inline_svg_with_a_path_per_series() -> None:
    svg = line_chart("ROC-AUC per round", [
        {"name": "federated", "points": [(1, 0.70, 0.65, 0.75), (2, 0.80, None, None),
                                         (3, 0.82, 0.80, 0.84)]},
        {"name": "alone", "points": [(1, 0.60, None, None), (3, 0.66, None, None)],
         "dashed": True},
        {"name": "nothing finite", "points": [(1, math.nan, None, None)]}],
        x_label="round", y_label="ROC-AUC")
    assert svg.startswith('<svg class="plot" data-kind="line" role="img" '
                          'aria-label="ROC-AUC per round"')
    assert "<?xml" not in svg and "DOCTYPE" not in svg and "<script" not in svg
    lines = _groups(svg, "series-")
    assert sorted(lines) == ["series-0", "series-1"]  # the all-NaN series draws nothing
    assert len(lines["series-0"]) == 3 and len(lines["series-1"]) == 2
    xs = [x for x, _ in lines["series-0"]]
    assert xs == sorted(xs) and xs[-1] - xs[0] > 100  # spread over the plot, left to right
    assert 'id="errorbar-0"' in svg and 'id="errorbar-1"' not in svg
    assert "federated" in svg and "ROC-AUC per round" in svg  # text stays text
    assert line_chart("empty", [{"name": "x", "points": []}], x_label="", y_label="") == ""


def test_bars_leave_gaps_for_missing_values_and_are_taller_for_larger_ones() -> None:
    svg = bar_chart("Pooled ROC-AUC", ["federated", "alone", "centralised"],
                    [("ROC-AUC", [0.8, None, 0.85]), ("PR-AUC", [0.2, 0.1, math.inf])],
                    y_label="score", reference=("oracle", 0.9))
    bars = _groups(svg, "bar-")
    assert sorted(bars) == ["bar-0-0", "bar-0-2", "bar-1-0", "bar-1-1"]

    def height(gid: str) -> float:
        ys = [y for _, y in bars[gid]]
        return max(ys) - min(ys)

    assert height("bar-0-2") > height("bar-0-0") > height("bar-1-0") > height("bar-1-1") > 0
    assert "oracle" in svg and 'data-kind="bar"' in svg
    assert bar_chart("none", ["a"], [("s", [None])], y_label="") == ""
