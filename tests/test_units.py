"""ainative.units: sizes, durations and CPU lists, and the call sites that use them."""

from __future__ import annotations

import os

import click
import pytest

from ainative.units import (
    MAX_CPU,
    MAX_SIZE,
    UnitError,
    format_cpus,
    parse_cpus,
    parse_duration,
    parse_size,
)


@pytest.mark.parametrize("text, n", [
    (4096, 4096), ("4096", 4096), ("64k", 64 << 10), ("512M", 512 << 20), ("512MiB", 512 << 20),
    ("1.5G", 3 << 29), ("1GB", 1 << 30), (" 2t ", 2 << 40), ("0", 0), ("1_000", 1000),
])
def test_parse_size(text: int | str, n: int) -> None:
    assert parse_size(text) == n


@pytest.mark.parametrize("bad", ["", "M", "x", "12Q", "-1", -1, "-1G", "infG", "nanM", "1e400k",
                                 "9" * 5000, str(MAX_SIZE + 1), True, 1.5, None, [1]])
def test_parse_size_refuses_with_a_value_error(bad: object) -> None:
    with pytest.raises(UnitError) as e:
        parse_size(bad)  # type: ignore[arg-type]
    assert isinstance(e.value, ValueError) and "\n" not in str(e.value)


@pytest.mark.parametrize("text, s", [
    ("30s", 30.0), ("30", 30.0), ("10m", 600.0), ("24h", 86400.0), ("2d", 172800.0),
    ("250ms", 0.25), (" 1.5 s ", 1.5),
])
def test_parse_duration(text: str, s: float) -> None:
    assert parse_duration(text) == pytest.approx(s)


@pytest.mark.parametrize("bad, reason", [
    ("", "use a number with s, m or h"), ("10x", "use a number with s, m or h"),
    ("-5s", "use a number with s, m or h"), ("1e3", "use a number with s, m or h"),
    ("\u0661s", "use a number with s, m or h"),  # an Arabic-Indic digit: not ASCII
    ("0", "must be positive"), ("0.0ms", "must be positive"),
    ("9" * 400 + "d", "too large"),
])
def test_parse_duration_errors_name_the_option(bad: str, reason: str) -> None:
    with pytest.raises(UnitError) as e:
        parse_duration(bad, "--max-queue")
    assert e.value.option == "--max-queue" and reason in e.value.reason
    assert str(e.value).startswith("--max-queue: ")


def test_stress_cli_turns_duration_errors_into_click_errors() -> None:
    from ainative.cli.stress_cmd import _duration

    assert _duration("2m", "--warmup") == 120.0
    with pytest.raises(click.BadParameter) as e:
        _duration("soon", "--warmup")
    assert e.value.param_hint == "--warmup"
    assert e.value.format_message() == (
        "Invalid value for --warmup: 'soon': use a number with s, m or h (30s, 10m, 24h)")


@pytest.mark.parametrize("text, cpus", [
    ("0", {0}), ("0-3,6", {0, 1, 2, 3, 6}), (" 1 , 3-4 ", {1, 3, 4}), ("2-2", {2}),
    ("0 - 1", {0, 1}), (f"{MAX_CPU}", {MAX_CPU}), ("1,,2", {1, 2}),
])
def test_parse_cpus(text: str, cpus: set[int]) -> None:
    assert parse_cpus(text) == cpus


def test_parse_cpus_all_is_this_process_affinity() -> None:
    assert parse_cpus("all") == frozenset(os.sched_getaffinity(0))


@pytest.mark.parametrize("bad", ["", ",", "3-1", "-1", "a", "1-", "0-99999999",
                                 f"{MAX_CPU + 1}", "1.5", "+1", "\u0661", "1" * 20, 3])
def test_parse_cpus_refuses_with_a_value_error(bad: object) -> None:
    with pytest.raises(UnitError):
        parse_cpus(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("cpus, text", [
    ({0, 1, 2, 3, 6}, "0-3,6"), ({5}, "5"), (set(), ""), ({1, 3, 5}, "1,3,5"), ([2, 1, 2], "1-2"),
])
def test_format_cpus(cpus: set[int], text: str) -> None:
    assert format_cpus(cpus) == text
    if cpus:
        assert parse_cpus(text) == frozenset(cpus)


def test_callers_use_units() -> None:
    # The parsers have one home; the modules that used to define them now import them.
    from ainative.cli import pool_cmd, stress_cmd
    from ainative.core import classes
    from ainative.mem import pool
    from ainative.stress import contention

    assert classes.parse_size is parse_size and classes.parse_cpus is parse_cpus
    assert classes.format_cpus is format_cpus
    assert pool_cmd.parse_size is parse_size and pool.parse_size is parse_size
    assert contention.parse_size is parse_size and stress_cmd.parse_duration is parse_duration
    assert stress_cmd.parse_size is parse_size


def test_contention_scenario_sizes_go_through_parse_size() -> None:
    from ainative.stress.contention import ContentionError, parse_scenario

    assert parse_scenario("mem:1G").amount == 1 << 30
    with pytest.raises(ContentionError, match="bad contention"):
        parse_scenario("mem:infG")
    with pytest.raises(ContentionError):
        parse_scenario("mem:-1G")
