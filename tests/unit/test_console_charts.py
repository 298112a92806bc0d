"""The console's server-rendered charts and its metrics history: pure functions over numbers."""

from __future__ import annotations

import re

from control_plane.console import charts
from control_plane.console.history import MetricsHistory
from control_plane.lib.metrics import ControlPlaneMetrics


def test_bar_chart_scales_bars_to_the_largest_value_and_escapes_labels():
    svg = str(charts.bar_chart([("<b>", 5), ("b", 10)], label="Spent & more", unit=" cr"))
    assert svg.startswith("<svg") and 'aria-label="Spent &amp; more"' in svg
    assert "<b>" not in svg and "&lt;b&gt;: 5 cr" in svg
    heights = [float(h) for h in re.findall(r'class="chart-bar"[^>]* height="([0-9.]+)"', svg)]
    assert len(heights) == 2 and heights[1] == 2 * heights[0]


def test_empty_charts_say_so_in_words():
    assert "No usage yet" in str(charts.bar_chart([("a", 0)], label="x", empty="No usage yet"))
    assert "Nothing" in str(charts.line_chart([None, None], label="x", empty="Nothing"))
    assert "Nothing" in str(charts.hbar_chart([], label="x", empty="Nothing"))


def test_line_chart_leaves_gaps_where_there_is_no_data():
    svg = str(charts.line_chart([1.0, 2.0, None, 3.0, 4.0], label="jobs/s"))
    assert svg.count("<polyline") == 2


def test_history_turns_counters_into_jobs_per_second_and_mean_ttft_per_minute():
    now = [1_000_000.0]
    metrics = ControlPlaneMetrics()
    history = MetricsHistory(metrics, interval_s=5, clock=lambda: now[0])
    history.sample()
    for _ in range(30):  # 30 jobs in the next minute, 20 of them completed with a 100 ms TTFT
        now[0] += 2
        metrics.jobs_finished.labels(status="completed", error="").inc()
    for _ in range(20):
        metrics.ttft.observe(0.1)
    for _ in range(10):
        metrics.jobs_finished.labels(status="failed", error="engine_error").inc()
    minutes = history.minutes(3)
    assert minutes[0].jobs_per_s is None and minutes[1].jobs_per_s is None  # before the first sample
    last = minutes[-1]
    assert abs(last.jobs_per_s - 40 / 60) < 1e-9 and abs(last.ttft_ms - 100.0) < 1e-6
    assert history.failures_last_hour() == {"engine_error": 10}
