"""Rule files: parsing, precedence, matching, and errors that name file and line."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ainative.core import rules
from ainative.core.classes import ConfigError
from ainative.core.rules import (
    MAX_RULE_FILE,
    ProcessFacts,
    Re2Pattern,
    RuleSet,
    load_rules,
    parse_rules_text,
)


def facts(comm: str = "x", exe: str | None = "/usr/bin/x", cmdline: str = "x",
          user: str | None = "alice", uid: int = 1000, cgroup: str = "/user.slice",
          parent: str | None = "bash", libs: list[str] | None = None,
          runtimes: list[str] | None = None) -> ProcessFacts:
    return ProcessFacts(comm, exe, cmdline, user, uid, cgroup, parent, lambda: libs or [],
                        lambda: runtimes or [])


def write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_builtin_rules_load_and_define_the_four_classes() -> None:
    rs = load_rules(rules_dir=None)
    assert {"inference", "batch", "training", "background"} <= set(rs.classes)
    inf = rs.classes["inference"]
    # Serving raises its I/O priority only: its CPU is protected by demoting the others.
    assert inf.serving and inf.nice is None and inf.cpu_weight is None
    assert inf.ioprio is not None and inf.ioprio[1] == 0
    assert inf.slice_ns == 100_000  # EEVDF's shortest slice: no share, earlier wakeups
    assert rs.classes["background"].only_while_serving_active
    assert rs.classes["training"].only_while_serving_active
    # batch is fair share: it changes nothing at all
    assert rs.classes["batch"].knobs_summary() == {}
    assert (rs.serving_class, rs.library_class, rs.gpu_process_class) == (
        "inference", "batch", "batch")


def test_slice_default_turns_the_builtin_slice_off(tmp_path: Path) -> None:
    p = write(tmp_path, "s.toml", '[classes.inference]\nslice = "default"\n')
    inf = load_rules([p], rules_dir=None).classes["inference"]
    assert inf.slice_ns == 0 and inf.serving and inf.ioprio is not None


def test_the_old_name_of_only_while_serving_active_still_works(tmp_path: Path) -> None:
    p = write(tmp_path, "old.toml", "[classes.lowly]\nnice = 10\n"
              "only_while_inference_active = true\n")
    assert load_rules([p], rules_dir=None).classes["lowly"].only_while_serving_active


def test_a_serving_class_cannot_wait_for_serving(tmp_path: Path) -> None:
    p = write(tmp_path, "bad.toml", "[classes.x]\nserving = true\n"
              "only_while_serving_active = true\n")
    with pytest.raises(ConfigError, match=r"bad.toml:2: class 'x': a serving class cannot"):
        load_rules([p], rules_dir=None)


def test_none_cannot_be_a_class_but_access_none_is_a_grant(tmp_path: Path) -> None:
    p = write(tmp_path, "n.toml", "[classes.none]\nnice = 1\n")
    with pytest.raises(ConfigError, match="'none' cannot be a class"):
        load_rules([p], rules_dir=None)
    q = write(tmp_path, "g.toml", '[access.none]\nusers = ["alice"]\n')
    assert "none" in load_rules([q], rules_dir=None).access.grants


def test_ignore_tables_match_like_rules_and_need_a_condition(tmp_path: Path) -> None:
    p = write(tmp_path, "i.toml", '[[ignore]]\nname = "ci jobs"\nuser = "ci"\n'
              '[[ignore]]\ncgroup = "/system.slice/db*"\n')
    rs = load_rules([p], rules_dir=None)
    hit = rs.first_ignore(facts(user="ci"))
    assert hit is not None and hit[0].name == "ci jobs" and hit[0].source.endswith("i.toml:1")
    assert rs.first_ignore(facts(cgroup="/system.slice/db.service")) is not None
    assert rs.first_ignore(facts(user="alice")) is None
    bad = write(tmp_path, "b.toml", '\n[[ignore]]\nname = "x"\n')
    with pytest.raises(ConfigError, match=r"b.toml:2: ignore 'x': matches nothing"):
        load_rules([bad], rules_dir=None)
    cls = write(tmp_path, "c.toml", '[[ignore]]\nuser = "x"\nclass = "batch"\n')
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['class'\]"):
        load_rules([cls], rules_dir=None)


def test_runtime_condition_matches_runtime_names() -> None:
    rs = load_rules(rules_dir=None)
    train = facts(comm="python3", cmdline="python3 train.py --epochs 3")
    assert rs.first_match(train) is None  # no runtime mapped: not training
    hit = rs.first_match(facts(comm="python3", cmdline="python3 train.py --epochs 3",
                               runtimes=["onnxruntime"]))
    assert hit is not None and hit[0].cls == "training" and "runtime=onnxruntime" in hit[1]
    nb = rs.first_match(facts(comm="python3", runtimes=["pytorch"],
                              cmdline="python3 -m ipykernel_launcher -f /tmp/k.json"))
    assert nb is not None and nb[0].cls == "batch"


@pytest.mark.parametrize("text, message", [
    ("active_cpu_percent = 0", "active_cpu_percent must be a number above 0"),
    ('active_cpu_percent = "2"', "active_cpu_percent must be a number above 0"),
    ('active_window = "0.01s"', "active_window must be a duration from 0.1 s to 60 s"),
    ('idle_after = "3 days"', "idle_after must be a duration from 0.2 s to 86400 s"),
    ("idle_after = true", "idle_after must be a duration"),
])
def test_bad_activity_settings_name_file_and_line(tmp_path: Path, text: str,
                                                   message: str) -> None:
    p = write(tmp_path, "a.toml", f"[settings]\n{text}\n")
    with pytest.raises(ConfigError, match=f"a.toml:2: setting {message}"):
        load_rules([p], rules_dir=None)


def test_activity_settings_take_numbers_and_durations(tmp_path: Path) -> None:
    p = write(tmp_path, "a.toml", '[settings]\nactive_cpu_percent = 5\n'
              'active_window = "500ms"\nidle_after = 3\n')
    rs = load_rules([p], rules_dir=None)
    assert (rs.active_cpu_percent, rs.active_window, rs.idle_after) == (5.0, 0.5, 3.0)


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
     5, "cmdline regex is not valid: missing ): ("),
    ('\n\n[[rule]]\ncomm = "a"\nclass = "nosuch"\n', 3, "not defined"),
    ('[[rule]]\ncomm = "a"\nklass = "inference"\n', 1, "unknown key"),
    ('[[rule]]\nname = "empty"\nclass = "inference"\n', 1, "matches nothing"),
    # A bad value in a class table points at the key's line, not the header's.
    ('\n[classes.fast]\nnice = -40\n', 3, "nice must be"),
    ('\n[classes.rt]\npolicy = "fifo"\n', 3, "rt_priority"),
    ('[classes.x]\npolicy = "fast"\n', 2, "policy must be one of"),
    ('[classes.x]\ndescription = "d"\n\ncpu_weight = true\n', 4, "cpu_weight must be"),
    ('[classes.x]\nnice = true\n', 2, "nice must be an integer -20..19, not True"),
    ('[classes.x]\nmemory_low = 1.5\n', 2, "memory_low: a size must be"),
    ('[classes.x]\naffinity = "0-99999999"\n', 2, "CPU numbers go up to 8191"),
    ('[classes.x]\nrank = "first"\n', 2, "rank must be an integer"),
    ('[classes.x]\nioprio = 3\n', 2, "ioprio must be text"),
    ('[classes.x]\nslice = "0.01ms"\n', 2, "slice must be 0.1ms..100ms"),
    ('[classes.x]\nslice = 1\n', 2, "slice must be a duration"),
    ('[classes.x]\nslice = "fast"\n', 2, "slice: "),
    ('[classes.x]\nspeed = 3\n', 2, "unknown key(s) ['speed']"),
    ('[classes]\nx = { nice = -40 }\n', 2, "nice must be"),  # inline: the class's line
    ('# a comment\n[classes.x]\nnice = 1\n[classes.y]\nnice = 99\n', 5, "class 'y'"),
    ('\n\nbogus = 1\n', 3, "unknown top-level table(s) ['bogus']"),
    ('[[rule]]\nname = 3\ncomm = "a"\nclass = "inference"\n', 1, "name must be a string"),
    ('[[rule]]\ncomm = true\nclass = "inference"\n', 1, "comm must be a string"),
    ('\n[rule]\nb = "x"\n', 2, "'rule' must be an array of tables"),
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
    assert str(e.value).startswith(f"{p}:2: invalid TOML:") and "line 2" in str(e.value)


@pytest.mark.parametrize("text, words", [
    ("a = " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    ("a = " + "9" * 5000 + "\n", "invalid TOML: Exceeds the limit"),
])
def test_toml_that_breaks_tomllib_is_a_config_error(tmp_path: Path, text: str,
                                                    words: str) -> None:
    # tomllib raises RecursionError / a plain ValueError for these, not TOMLDecodeError.
    p = write(tmp_path, "deep.toml", text)
    with pytest.raises(ConfigError, match=re.escape(words)):
        load_rules([p], rules_dir=None)


def test_missing_and_binary_files_get_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read rule file"):
        load_rules([str(tmp_path / "nope.toml")], rules_dir=None)
    p = tmp_path / "bin.toml"
    p.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_rules([str(p)], rules_dir=None)


# --- Rule files: only regular, trusted files, never blocking -------------------------

def run_py(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run code in a fresh interpreter: a hang becomes TimeoutExpired, not a stuck suite."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, check=False)


LOAD_IN_CHILD = """
    import sys
    from ainative.core.classes import ConfigError
    from ainative.core.rules import load_rules
    extra = sys.argv[2:] if len(sys.argv) > 2 else []
    try:
        load_rules(extra, rules_dir=sys.argv[1] or None)
        print("LOADED")
    except ConfigError as e:
        print("ERROR", e)
"""


def load_in_child(rules_dir: str, *extra: str) -> str:
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(LOAD_IN_CHILD), rules_dir,
                        *extra], capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def rules_dir(tmp_path: Path) -> Path:
    d = tmp_path / "rules.d"
    d.mkdir(mode=0o755)
    return d


def test_fifo_in_rules_dir_is_refused_without_hanging(tmp_path: Path) -> None:
    d = rules_dir(tmp_path)
    (d / "10-ok.toml").write_text('[[rule]]\ncomm = "w"\nclass = "training"\n')
    os.mkfifo(d / "20-pipe.toml")
    out = load_in_child(str(d))  # with a plain open() this blocks until the timeout
    assert out == (f"ERROR {d}/20-pipe.toml: not a regular file (a FIFO); "
                   "rule files must be regular files")


def test_fifo_given_as_rules_file_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.toml"
    os.mkfifo(fifo)
    out = load_in_child("", str(fifo))
    assert out == f"ERROR {fifo}: not a regular file (a FIFO); rule files must be regular files"


def test_device_directory_and_socket_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_rules(["/dev/zero"], rules_dir=None)
    assert str(e.value) == ("/dev/zero: not a regular file (a character device); "
                            "rule files must be regular files")
    d = rules_dir(tmp_path)
    (d / "a.toml").mkdir()
    with pytest.raises(ConfigError, match=re.escape(f"{d}/a.toml: not a regular file "
                                                    "(a directory)")):
        load_rules(rules_dir=str(d))
    (d / "a.toml").rmdir()
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(d / "b.toml"))
        with pytest.raises(ConfigError, match=re.escape(f"{d}/b.toml: not a regular file "
                                                        "(a socket)")):
            load_rules(rules_dir=str(d))
    finally:
        s.close()


def test_symlink_is_followed_only_to_a_trusted_regular_file(tmp_path: Path) -> None:
    d = rules_dir(tmp_path)
    real = tmp_path / "real.toml"
    real.write_text('[[rule]]\ncomm = "w"\nclass = "background"\n')
    (d / "10.toml").symlink_to(real)
    hit = load_rules(rules_dir=str(d)).first_match(facts(comm="w"))
    assert hit is not None and hit[0].cls == "background"
    real.chmod(0o666)  # the link itself is always 0777: the target's mode is what counts
    with pytest.raises(ConfigError, match=re.escape(f"chmod go-w {d}/10.toml")):
        load_rules(rules_dir=str(d))
    (d / "10.toml").unlink()
    (d / "10.toml").symlink_to("/dev/zero")
    with pytest.raises(ConfigError, match=re.escape("not a regular file (a character device)")):
        load_rules(rules_dir=str(d))
    (d / "10.toml").unlink()
    os.mkfifo(tmp_path / "fifo")
    (d / "10.toml").symlink_to(tmp_path / "fifo")
    assert "not a regular file (a FIFO)" in load_in_child(str(d))


@pytest.mark.parametrize("mode, who", [(0o664, "group"), (0o646, "others"),
                                       (0o666, "group and others")])
def test_rule_file_writable_by_others_is_refused(tmp_path: Path, mode: int, who: str) -> None:
    p = write(tmp_path, "r.toml", '[[rule]]\ncomm = "w"\nclass = "training"\n')
    os.chmod(p, mode)
    with pytest.raises(ConfigError) as e:
        load_rules([p], rules_dir=None)
    assert str(e.value) == (f"{p}: rule file is writable by {who} (mode {mode:04o}), so "
                            f"anyone could change the rules; fix: chmod go-w {p}")
    os.chmod(p, 0o644)
    load_rules([p], rules_dir=None)


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o1777])
def test_rules_dir_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    d = rules_dir(tmp_path)
    (d / "a.toml").write_text('[[rule]]\ncomm = "w"\nclass = "training"\n')
    d.chmod(mode)
    with pytest.raises(ConfigError, match=re.escape(f"{d}: rules directory is writable by")) as e:
        load_rules(rules_dir=str(d))
    assert str(e.value).endswith(f"fix: chmod go-w {d}")


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")


@needs_root
def test_rule_file_or_dir_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    p = write(tmp_path, "r.toml", '[[rule]]\ncomm = "w"\nclass = "training"\n')
    os.chown(p, 4242, 4242)
    with pytest.raises(ConfigError) as e:
        load_rules([p], rules_dir=None)
    assert str(e.value).startswith(f"{p}: rule file is owned by uid 4242")
    assert str(e.value).endswith(f"fix: chown root {p}")
    d = rules_dir(tmp_path)
    os.chown(d, 4242, 0)
    with pytest.raises(ConfigError, match=re.escape(f"fix: chown root {d}")):
        load_rules(rules_dir=str(d))


def test_oversized_rule_file_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "big.toml"
    p.write_text("#" * MAX_RULE_FILE + "\n")
    with pytest.raises(ConfigError, match=f"larger than the limit of {MAX_RULE_FILE}"):
        load_rules([str(p)], rules_dir=None)


def test_rules_dir_missing_is_fine_but_a_file_is_not(tmp_path: Path) -> None:
    assert load_rules(rules_dir=str(tmp_path / "absent")).rules
    f = write(tmp_path, "notadir", "")
    with pytest.raises(ConfigError, match="rules directory is not a directory"):
        load_rules(rules_dir=f)


def test_hidden_and_non_toml_entries_in_rules_dir_are_skipped(tmp_path: Path) -> None:
    d = rules_dir(tmp_path)
    os.mkfifo(d / ".hidden.toml")
    (d / "x.toml~").write_text("not toml at all [")
    (d / "a.toml").write_text('[[rule]]\ncomm = "w"\nclass = "training"\n')
    assert load_in_child(str(d)) == "LOADED"


# --- cmdline regexes: RE2, linear time, never Python's re -----------------------------

@pytest.mark.parametrize("regex, detail", [
    (r"(a)\1", r"invalid escape sequence: \1"),
    (r"(?=x)y", "invalid perl operator: (?="),
    (r"(?<!x)y", "invalid perl operator: (?<!"),
    (r"(?P<n>a)(?P=n)", "invalid perl operator: (?P"),
])
def test_unsupported_regex_features_are_load_time_errors(tmp_path: Path, regex: str,
                                                         detail: str) -> None:
    p = write(tmp_path, "r.toml", f"\n[[rule]]\nname = \"r\"\ncmdline = '{regex}'\n"
              "class = \"inference\"\n")
    with pytest.raises(ConfigError) as e:
        load_rules([p], rules_dir=None)
    assert str(e.value) == (f"{p}:2: rule 'r': cmdline regex uses a feature RE2 does not "
                            f"support (linear-time matching): {detail}")


def test_re2_errors_are_not_printed_to_stderr(tmp_path: Path,
                                              capfd: pytest.CaptureFixture[str]) -> None:
    p = write(tmp_path, "r.toml", "[[rule]]\ncmdline = '(?=x)'\nclass = \"inference\"\n")
    with pytest.raises(ConfigError):
        load_rules([p], rules_dir=None)
    assert "Error parsing" not in capfd.readouterr().err


def test_cmdline_is_compiled_by_re2(tmp_path: Path) -> None:
    rs = load_rules(rules_dir=None)
    pats = [r.cmdline for r in rs.rules if r.cmdline is not None]
    assert pats and all(isinstance(c, Re2Pattern) for c in pats)
    assert not any(isinstance(c, re.Pattern) for c in pats)


def test_a_re2_module_that_falls_back_to_python_re_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class FallingBack:  # like PyPI packages named re2 that hand hard patterns to re
        error = re.error

        class Options:
            log_errors = True

        @staticmethod
        def compile(pattern: str, options: object = None) -> re.Pattern[str]:
            return re.compile(pattern)

    monkeypatch.setattr(rules, "re2", FallingBack)
    p = write(tmp_path, "r.toml", "[[rule]]\ncmdline = 'x'\nclass = \"inference\"\n")
    with pytest.raises(ConfigError, match="is not Google RE2"):
        load_rules([p], rules_dir=None, builtin=False)
    monkeypatch.setattr(rules, "re2", None)
    with pytest.raises(ConfigError, match=re.escape("need the google-re2 package")):
        load_rules([p], rules_dir=None, builtin=False)


def test_catastrophic_regex_returns_quickly(tmp_path: Path) -> None:
    p = write(tmp_path, "r.toml", "[classes.c]\nnice = 1\n\n[[rule]]\nname = \"evil\"\n"
              "cmdline = '(a+)+$'\nclass = \"c\"\n")
    r = run_py(f"""
        import time
        from ainative.core.rules import ProcessFacts, load_rules
        rs = load_rules([{p!r}], rules_dir=None, builtin=False)
        def f(cmd):
            return ProcessFacts("x", None, cmd, None, 0, "/", None, lambda: [])
        t0 = time.perf_counter()
        bad = rs.first_match(f("a" * 65536 + "!"))
        good = rs.first_match(f("a" * 65536))
        print(bad is None, good is not None and good[0].name, time.perf_counter() - t0)
    """, timeout=60)  # Python's re would never return: the timeout fails the test
    assert r.returncode == 0, r.stderr
    no_match, name, elapsed = r.stdout.split()
    assert (no_match, name) == ("True", "evil")
    assert float(elapsed) < 2.0


def test_cmdline_with_a_lone_surrogate_still_matches(tmp_path: Path) -> None:
    p = write(tmp_path, "r.toml", "[[rule]]\ncmdline = 'srv'\nclass = \"inference\"\n")
    rs = load_rules([p], rules_dir=None)
    hit = rs.first_match(facts(comm="q", exe=None, cmdline="srv \udcff --port 1"))
    assert hit is not None and hit[0].cls == "inference"


# --- Settings: type-checked with file and line ----------------------------------------

@pytest.mark.parametrize("text, line, message", [
    ('[settings]\n# t\ngpu_available_threshold = "high"\n', 3,
     "setting gpu_available_threshold must be a number 0..100, not 'high'"),
    ("[settings]\ngpu_available_threshold = true\n", 2,
     "setting gpu_available_threshold must be a number 0..100, not True"),
    ("[settings]\ngpu_available_threshold = 100.5\n", 2,
     "setting gpu_available_threshold must be a number 0..100, not 100.5"),
    ("[settings]\ngpu_available_threshold = -1\n", 2,
     "setting gpu_available_threshold must be a number 0..100, not -1"),
    ("[settings]\ngpu_available_threshold = nan\n", 2,
     "setting gpu_available_threshold must be a number 0..100, not nan"),
    ("\nsettings.library_class = 5\n", 2,
     "setting library_class must be the name of a class (a string), not 5"),
    ('[settings]\ngpu_process_class = ["inference"]\n', 2,
     "setting gpu_process_class must be the name of a class (a string), not ['inference']"),
    ('\n[settings]\ngpu_available_threshold = 5\ngpu_process_class = "nosuch"\n', 4,
     "setting gpu_process_class names class 'nosuch', which is not defined (classes: "
     "background, batch, inference, training)"),
    ("\n[settings]\nspeed = 1\n", 3, "unknown setting(s) ['speed']"),
    ("\nsettings = 3\n", 2, "[settings] must be a table"),
])
def test_bad_setting_names_file_line_and_limit(tmp_path: Path, text: str, line: int,
                                               message: str) -> None:
    p = write(tmp_path, "s.toml", text)
    with pytest.raises(ConfigError) as e:
        load_rules([p], rules_dir=None)
    assert str(e.value).startswith(f"{p}:{line}: {message}")


def test_good_settings_are_used(tmp_path: Path) -> None:
    p = write(tmp_path, "s.toml", '[settings]\ngpu_available_threshold = 30\n'
              'library_class = "training"\n')
    rs = load_rules([p], rules_dir=None)
    assert rs.gpu_available_threshold == 30.0 and isinstance(rs.gpu_available_threshold, float)
    assert rs.library_class == "training" and rs.gpu_process_class == "batch"


def test_settings_properties_never_raise() -> None:
    rs = RuleSet(settings={"gpu_available_threshold": "high", "library_class": 5,
                           "gpu_process_class": None})
    assert rs.gpu_available_threshold == 50.0
    assert rs.library_class == "batch" and rs.gpu_process_class == "batch"
    assert rs.serving_class == "inference" and rs.idle_after == 30.0


def test_a_bad_setting_in_a_later_file_does_not_leak_into_the_ruleset(tmp_path: Path) -> None:
    rs = RuleSet()
    with pytest.raises(ConfigError):
        parse_rules_text('[settings]\ngpu_available_threshold = "x"\n', "f.toml", rs)
    assert "gpu_available_threshold" not in rs.settings

