"""The SVG chart helper: what it draws for given numbers, and that text in it is escaped."""

from __future__ import annotations

import re

import pytest

from metrics.charts import Series, chart_bars, chart_lines, chart_ranking, number_format


def count(svg: str, kind: str) -> int:
    return len(re.findall(rf'class="{kind}"', svg))


def test_stacked_bars_draw_one_rect_per_positive_value():
    svg = chart_bars(title="t", labels=["a", "b", "c"], series=[Series("x", [1, 0, 2]), Series("y", [3, None, 1])])
    assert count(svg, "bar") == 4
    assert 'class="chart-legend"' in svg  # two series: a legend


def test_stacked_bar_heights_add_up_to_the_total():
    svg = chart_bars(title="t", labels=["a"], series=[Series("x", [1]), Series("y", [4])])
    heights = [float(h) for h in re.findall(r'class="bar"[^>]*height="([\d.]+)"', svg)]
    # Total 5 on an axis topped at 8 (ticks of 2): the stack fills 5/8 of the plot's 172 px.
    assert sum(heights) == pytest.approx(172 * 5 / 8, abs=0.2)


def test_lines_break_at_missing_values():
    svg = chart_lines(title="t", labels=list("abcde"), series=[Series("x", [1, 2, None, 3, 4])])
    (path,) = re.findall(r'class="line" d="([^"]+)"', svg)
    assert path.count("M") == 2
    assert count(svg, "point") == 4


def test_text_is_escaped():
    svg = chart_ranking(title="<b>", labels=['<script>alert("x")</script>'], values=[3])
    assert "<script>" not in svg
    assert "&lt;script&gt;" in svg


def test_ranking_draws_one_bar_per_item():
    assert count(chart_ranking(title="t", labels=["a", "b"], values=[5, 2]), "bar") == 2


@pytest.mark.parametrize(
    ("value", "text"), [(0, "0"), (0.25, "0.25"), (12.4, "12"), (1500, "1.5k"), (25_000, "25k"), (3_400_000, "3.4M")]
)
def test_number_format(value, text):
    assert number_format(value) == text
