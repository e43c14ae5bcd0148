"""Percentiles against a known distribution; bounded memory series and their slope."""

from __future__ import annotations

import numpy as np

from ainative.stress.metrics import BoundedSeries, distribution, new_histogram, summarise


def test_percentiles_match_a_known_distribution() -> None:
    rng = np.random.default_rng(7)
    values = rng.lognormal(mean=6.0, sigma=0.8, size=200_000).astype(int) + 1  # microseconds
    h = new_histogram()
    for v in values:
        h.record_value(int(v))
    s = summarise(h)
    for key, q in (("p50_ms", 50), ("p90_ms", 90), ("p99_ms", 99), ("p99_9_ms", 99.9)):
        exact = float(np.percentile(values, q)) / 1000
        assert abs(s[key] - exact) / exact < 0.01, (key, s[key], exact)  # 3 significant digits
    assert abs(s["max_ms"] - values.max() / 1000) / (values.max() / 1000) < 0.001
    dist = distribution(h)
    assert [p for p, _ in dist] == sorted(p for p, _ in dist)
    assert [v for _, v in dist] == sorted(v for _, v in dist)


def test_uniform_distribution_percentiles() -> None:
    h = new_histogram()
    for v in range(1, 10_001):
        h.record_value(v)
    s = summarise(h)
    assert abs(s["p50_ms"] - 5.0) < 0.01 and abs(s["p99_ms"] - 9.9) < 0.01
    assert summarise(new_histogram())["p99_ms"] == 0.0


def test_bounded_series_stays_bounded_and_spread() -> None:
    s = BoundedSeries(capacity=64)
    for i in range(100_000):
        s.add(float(i), 100.0 + 0.5 * i / 3600.0)
    assert len(s) < 64
    assert s.t[0] == 0.0 and s.t[-1] > 90_000  # still covers the whole run
    slope = s.slope_per_hour()
    assert slope is not None and abs(slope - 0.5) < 1e-6


def test_flat_series_has_zero_slope_and_short_one_none() -> None:
    s = BoundedSeries()
    for i in range(100):
        s.add(float(i), 42.0)
    assert abs(s.slope_per_hour() or 0.0) < 1e-9
    short = BoundedSeries()
    short.add(0.0, 1.0)
    assert short.slope_per_hour() is None
