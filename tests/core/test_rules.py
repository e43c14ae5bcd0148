"""Rule files: parsing, precedence, matching, and errors that name file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from ainative.core.classes import ConfigError
from ainative.core.rules import ProcessFacts, load_rules


def facts(comm: str = "x", exe: str | None = "/usr/bin/x", cmdline: str = "x",
          user: str | None = "alice", uid: int = 1000, cgroup: str = "/user.slice",
          parent: str | None = "bash", libs: list[str] | None = None) -> ProcessFacts:
    return ProcessFacts(comm, exe, cmdline, user, uid, cgroup, parent, lambda: libs or [])


def write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_builtin_rules_load_and_define_the_three_classes() -> None:
    rs = load_rules(rules_dir=None)
    assert {"inference", "training", "background"} <= set(rs.classes)
    assert rs.classes["inference"].nice is not None and rs.classes["inference"].nice < 0
    assert rs.classes["background"].only_while_inference_active


def test_plain_python_and_maild_match_no_builtin_rule() -> None:
    rs = load_rules(rules_dir=None)
    assert rs.first_match(facts(comm="python3", exe="/usr/bin/python3.11",
                                cmdline="python3 script.py")) is None
    assert rs.first_match(facts(comm="maild", exe="/usr/sbin/maild", cmdline="maild -d")) is None


def test_builtin_rule_classifies_stress_ng_as_background() -> None:
    rs = load_rules(rules_dir=None)
    hit = rs.first_match(facts(comm="stress-ng-cpu", cmdline="stress-ng --cpu 4"))
    assert hit is not None and hit[0].cls == "background"


def test_every_condition_must_match(tmp_path: Path) -> None:
    p = write(tmp_path, "r.toml", """
[[rule]]
name = "my server"
comm = "srv*"
user = "alice"
cmdline = '--model\\s+\\S+\\.onnx'
class = "inference"
""")
    rs = load_rules([p], rules_dir=None)
    hit = rs.first_match(facts(comm="srv1", cmdline="srv1 --model m.onnx"))
    assert hit is not None and hit[0].name == "my server"
    assert any(w.startswith("user=") for w in hit[1])
    assert rs.first_match(facts(comm="srv1", cmdline="srv1 --model m.onnx", user="bob",
                                uid=1001)) is None
    assert rs.first_match(facts(comm="srv1", cmdline="srv1")) is None


def test_library_parent_cgroup_and_exe_conditions(tmp_path: Path) -> None:
    p = write(tmp_path, "r.toml", """
[[rule]]
library = "libtorch_cpu*"
parent = "torchrun"
cgroup = "/jobs/*"
exe = "/opt/*/python*"
class = "training"
""")
    rs = load_rules([p], rules_dir=None)
    f = facts(exe="/opt/venv/python3", parent="torchrun", cgroup="/jobs/42",
              libs=["libc.so.6", "libtorch_cpu.so"])
    hit = rs.first_match(f)
    assert hit is not None and hit[0].cls == "training"
    assert rs.first_match(facts(exe="/opt/venv/python3", parent="torchrun", cgroup="/jobs/42",
                                libs=["libc.so.6"])) is None


def test_later_files_take_precedence_and_may_redefine_a_class(tmp_path: Path) -> None:
    a = write(tmp_path, "a.toml", '[[rule]]\ncomm = "job"\nclass = "training"\n')
    b = write(tmp_path, "b.toml", '[classes.inference]\nnice = -5\n\n'
              '[[rule]]\ncomm = "job"\nclass = "inference"\n')
    rs = load_rules([a, b], rules_dir=None)
    hit = rs.first_match(facts(comm="job"))
    assert hit is not None and hit[0].cls == "inference"
    assert rs.classes["inference"].nice == -5
    # Keys b.toml did not name keep the built-in value.
    assert rs.classes["inference"].ioprio is not None


def test_rules_dir_is_read_in_sorted_order(tmp_path: Path) -> None:
    d = tmp_path / "rules.d"
    d.mkdir()
    (d / "10-a.toml").write_text('[[rule]]\ncomm = "w"\nclass = "training"\n')
    (d / "20-b.toml").write_text('[[rule]]\ncomm = "w"\nclass = "background"\n')
    rs = load_rules(rules_dir=str(d))
    hit = rs.first_match(facts(comm="w"))
    assert hit is not None and hit[0].cls == "background"


@pytest.mark.parametrize("text, line, words", [
    ('[[rule]]\ncomm = "a"\nclass = "inference"\n\n[[rule]]\ncmdline = "("\nclass = "inference"\n',
     5, "unterminated subpattern"),
    ('\n\n[[rule]]\ncomm = "a"\nclass = "nosuch"\n', 3, "not defined"),
    ('[[rule]]\ncomm = "a"\nklass = "inference"\n', 1, "unknown key"),
    ('[[rule]]\nname = "empty"\nclass = "inference"\n', 1, "matches nothing"),
    ('\n[classes.fast]\nnice = -40\n', 2, "nice must be"),
    ('\n[classes.rt]\npolicy = "fifo"\n', 2, "rt_priority"),
    ('[classes.x]\npolicy = "fast"\n', 1, "policy must be one of"),
])
def test_bad_rule_file_error_names_file_and_line(tmp_path: Path, text: str, line: int,
                                                  words: str) -> None:
    p = write(tmp_path, "bad.toml", text)
    with pytest.raises(ConfigError) as e:
        load_rules([p], rules_dir=None)
    assert f"{p}:{line}" in str(e.value)
    assert words in str(e.value)


def test_invalid_toml_names_file_and_line(tmp_path: Path) -> None:
    p = write(tmp_path, "bad.toml", '[[rule]]\ncomm = "a\nclass = "inference"\n')
    with pytest.raises(ConfigError) as e:
        load_rules([p], rules_dir=None)
    assert p in str(e.value) and "line 2" in str(e.value)


def test_missing_and_binary_files_get_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read rule file"):
        load_rules([str(tmp_path / "nope.toml")], rules_dir=None)
    p = tmp_path / "bin.toml"
    p.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_rules([str(p)], rules_dir=None)
