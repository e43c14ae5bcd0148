"""Fuzz the rule loader: whatever the text, parse + validate succeed or raise ConfigError.

Any other exception would be a traceback in the daemon's log instead of a one-line error.
Examples are bounded so the file runs in a few seconds.
"""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ainative.core.classes import ConfigError
from ainative.core.rules import (
    ProcessFacts,
    RuleSet,
    builtin_rules_text,
    parse_rules_text,
    validate,
)

BUILTIN = builtin_rules_text()
FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def load(text: str, builtin: bool = True) -> RuleSet | None:
    """Parse (on top of the built-in rules) and validate; None if a ConfigError says no."""
    rs = RuleSet()
    if builtin:
        parse_rules_text(BUILTIN, "<built-in rules>", rs)
    try:
        parse_rules_text(text, "fuzz.toml", rs)
        validate(rs)
    except ConfigError as e:
        assert "\n" not in str(e), "errors are one line"
        assert str(e).startswith(("fuzz.toml", "<built-in rules>")), str(e)
        return None
    return rs


def use(rs: RuleSet, cmdline: str = "python3 train.py --x") -> None:
    """What the daemon does with a loaded RuleSet must not raise either."""
    f = ProcessFacts("x", "/usr/bin/x", cmdline, "alice", 1000, "/", "bash", lambda: ["libx"])
    rs.first_match(f)
    assert isinstance(rs.gpu_available_threshold, float)
    assert isinstance(rs.library_class, str) and isinstance(rs.gpu_process_class, str)
    for c in rs.classes.values():
        msg = rs.access.check(c, 3_999_999)
        assert msg is None or "\n" not in msg
        c.knobs_summary()


# --- arbitrary text ----------------------------------------------------------------------

@FUZZ
@given(st.text(max_size=400))
def test_arbitrary_text(text: str) -> None:
    load(text, builtin=False)


@FUZZ
@given(st.lists(st.sampled_from([
    "[settings]", "[classes.x]", "[classes.inference]", "[[rule]]", "[access.inference]",
    "[access.x]", "[access]", "[classes]", 'class = "x"', 'class = "inference"',
    'comm = "a*"', "cmdline = '(a+)+$'", "cmdline = '(?=x)'", "cmdline = '('",
    "nice = -5", "nice = 99", "nice = true", 'policy = "fifo"', "rt_priority = 5",
    'ioprio = "rt:1"', 'ioprio = "be:9"', 'affinity = "0-3"', 'affinity = "9-1"',
    'cpuset = "0-99999999"', 'memory_low = "1G"', 'memory_low = "infk"', "memory_low = -1",
    "cgroup = true", "cpu_weight = 0", "cpu_weight = 10000", "rank = 1.5",
    'users = ["a", 1]', "users = [-1]", 'groups = ["g"]', "groups = 3",
    "gpu_available_threshold = 50", 'gpu_available_threshold = "high"',
    'library_class = "nosuch"', "gpu_process_class = 1", "x = 1", "",
]), max_size=25))
def test_shuffled_known_lines(lines: list[str]) -> None:
    rs = load("\n".join(lines) + "\n")
    if rs is not None:
        use(rs)


# --- TOML-shaped documents, rendered by hand ---------------------------------------------

KEYS = ["classes", "rule", "settings", "access", "inference", "training", "background", "x",
        "name", "class", "comm", "exe", "cmdline", "user", "cgroup", "parent", "library",
        "nice", "policy", "rt_priority", "ioprio", "affinity", "cpu_weight", "cpu_idle",
        "cpuset", "memory_low", "only_while_inference_active", "rank", "description",
        "gpu_available_threshold", "library_class", "gpu_process_class", "users", "groups"]
STRINGS = ["inference", "training", "background", "x", "fifo", "rr", "batch", "idle",
           "other", "rt:0", "be:4", "idle", "none:1", "be:99", "0-3", "all", "3-1", "0-9999",
           "1G", "512M", "-1K", "nanT", "infG", "1e400k", "(a+)+$", "(a)\\1", "(?<=x)y", "(",
           "[", "\\", "a*", "*", "", " ", "\x00", "é", "\U0001f600", "a" * 300]

scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 19, -20, 99, 100, 101, 10000, 10001]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(STRINGS),
    st.text(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)),
    max_leaves=25,
)
shapeless = st.dictionaries(
    st.sampled_from(KEYS),
    st.one_of(
        values,
        st.dictionaries(st.sampled_from(KEYS), values, max_size=5),
        st.lists(st.dictionaries(st.sampled_from(KEYS), values, max_size=6), max_size=4),
    ),
    max_size=5,
)
# Mostly-right documents, so the fuzzing gets past TOML and into the checks of each key.
plausible = st.one_of(st.sampled_from(STRINGS), st.sampled_from([0, 1, -5, 5, 50, 100, 10000]),
                      st.booleans(), st.lists(st.sampled_from(STRINGS), max_size=3), scalars)
CLASS_NAMES = st.sampled_from(["inference", "training", "background", "gold", "x y"])
CLASS_KEYS = ["description", "nice", "policy", "rt_priority", "ioprio", "affinity", "cgroup",
              "cpu_weight", "cpu_idle", "cpuset", "memory_low", "only_while_inference_active",
              "rank"]
RULE_KEYS = ["name", "class", "comm", "exe", "cmdline", "user", "cgroup", "parent", "library"]
shaped = st.fixed_dictionaries({}, optional={
    "settings": st.dictionaries(
        st.sampled_from(["gpu_available_threshold", "library_class", "gpu_process_class"]),
        st.one_of(CLASS_NAMES, st.floats(-10, 110), plausible), max_size=3),
    "classes": st.dictionaries(CLASS_NAMES, st.dictionaries(
        st.sampled_from(CLASS_KEYS), plausible, max_size=5), max_size=3),
    "access": st.dictionaries(CLASS_NAMES, st.dictionaries(
        st.sampled_from(["users", "groups"]),
        st.lists(st.one_of(st.integers(-2, 2**33), st.sampled_from(["root", "nobody", ""])),
                 max_size=3), max_size=2), max_size=2),
    "rule": st.lists(st.fixed_dictionaries({"class": CLASS_NAMES}, optional={
        k: plausible for k in RULE_KEYS if k != "class"}), max_size=3),
})
documents = st.one_of(shapeless, shaped)


def key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() and k.isascii() else json.dumps(k)


def value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(v, list):
        return "[" + ", ".join(value(x) for x in v) + "]"
    return "{" + ", ".join(f"{key(k)} = {value(x)}" for k, x in v.items()) + "}"


def render(doc: dict[str, Any]) -> str:
    """Scalars first, then [tables] of tables as headers, [[arrays]] of tables as headers."""
    top, tables, arrays = [], [], []
    for k, v in doc.items():
        if isinstance(v, dict) and v and all(isinstance(x, dict) for x in v.values()):
            for sub, t in v.items():
                tables.append(f"[{key(k)}.{key(sub)}]\n"
                              + "".join(f"{key(a)} = {value(b)}\n" for a, b in t.items()))
        elif isinstance(v, dict):
            tables.append(f"[{key(k)}]\n" + "".join(f"{key(a)} = {value(b)}\n"
                                                   for a, b in v.items()))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for t in v:
                arrays.append(f"[[{key(k)}]]\n" + "".join(f"{key(a)} = {value(b)}\n"
                                                          for a, b in t.items()))
        else:
            top.append(f"{key(k)} = {value(v)}\n")
    return "".join(top) + "\n".join(tables + arrays)


@FUZZ
@given(documents)
def test_toml_shaped_documents(doc: dict[str, Any]) -> None:
    rs = load(render(doc))
    if rs is not None:
        use(rs)


# --- mutations of the built-in rules -----------------------------------------------------

LINES = BUILTIN.splitlines()


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["delete", "duplicate", "replace", "insert",
                                           "truncate", "swap"]),
                          st.integers(min_value=0, max_value=len(LINES) - 1),
                          st.integers(min_value=0, max_value=len(LINES) - 1),
                          st.text(max_size=30)),
                min_size=1, max_size=6),
       st.text(max_size=80))
def test_mutated_builtin_rules(ops: list[tuple[str, int, int, str]], cmdline: str) -> None:
    lines = list(LINES)
    for op, i, j, s in ops:
        i %= max(len(lines), 1)
        j %= max(len(lines), 1)
        if not lines:
            lines = [s]
        elif op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[j])
        elif op == "replace":
            lines[i] = s
        elif op == "insert":
            lines.insert(i, s)
        elif op == "truncate":
            lines[i] = lines[i][: len(s)]
        else:
            lines[i], lines[j] = lines[j], lines[i]
    rs = load("\n".join(lines) + "\n", builtin=False)
    if rs is not None:
        use(rs, cmdline)


def test_renderer_makes_toml_the_loader_accepts() -> None:
    # The fuzzers above are only worth something if the renderer writes real TOML.
    doc = {"classes": {"gold": {"nice": -3, "cgroup": True}},
           "access": {"gold": {"users": [1001, "svc"]}},
           "rule": [{"name": "g", "comm": ["a*"], "class": "gold"}]}
    rs = load(render(doc))
    assert rs is not None and rs.classes["gold"].nice == -3
    assert rs.access.grants["gold"].users == {1001, "svc"}
