"""Rule files in TOML: classes, settings, access grants and [[rule]] tables.

Order of sources: the built-in file, then /etc/ainative/rules.d/*.toml (sorted), then each
``--rules`` file. A later source may redefine a class (only the keys it names) or a
setting; its rules are tried before earlier sources' rules; inside one file the first
matching rule wins; its [access.CLASS] grants add to earlier ones.

Rule files decide who gets CPU, so only files that root (or the daemon's own user) owns
and nobody else can write are read, and only regular files: a FIFO or a device in
rules.d must not hang or feed the daemon. Command-line regexes are compiled with RE2,
whose matching time is linear in the command line, so a rule cannot be made to spin
on a crafted command line.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
import stat
import sys
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Protocol, TypeGuard

from ainative.core.access import OPT_OUT, AccessPolicy, Grant
from ainative.core.classes import BadClassKey, ClassPolicy, ConfigError, class_from_table
from ainative.core.guard import BadGuardKey, GuardConfig, guard_config
from ainative.fsnames import file_kind, user_label

try:  # PyPI google-re2; a declared dependency, but say so in one line if it is missing
    import re2
except ImportError:  # pragma: no cover - exercised only on a broken install
    re2 = None

DEFAULT_RULES_DIR = "/etc/ainative/rules.d"
MAX_RULE_FILE = 1 << 20

_TOP_KEYS = {"classes", "rule", "ignore", "settings", "access", "guard"}
_CONDITION_KEYS = {"comm", "exe", "cmdline", "user", "cgroup", "parent", "library", "runtime"}
_RULE_KEYS = {"name", "class", *_CONDITION_KEYS}
_IGNORE_KEYS = {"name", *_CONDITION_KEYS}
_CLASS_SETTINGS = {"library_class", "gpu_process_class", "serving_class"}
_DURATION_SETTINGS = {"active_window", "idle_after"}
_SETTING_KEYS = {"gpu_available_threshold", "active_cpu_percent", *_CLASS_SETTINGS,
                 *_DURATION_SETTINGS}
_ACCESS_KEYS = {"users", "groups"}
_MAX_ID = (1 << 32) - 2  # (uid_t)-1 means "no id"
_DEFAULT_THRESHOLD = 50.0
# An AI runtime with no sign of serving is throughput work; with one, it serves.
_DEFAULT_CLASS = "batch"
_DEFAULT_SERVING_CLASS = "inference"
# Activity of serving processes (see core/activity.py for what each means).
_DEFAULT_ACTIVE_CPU_PERCENT = 2.0
_DEFAULT_ACTIVE_WINDOW = 1.0
_DEFAULT_IDLE_AFTER = 30.0
# Bounds on the activity settings: a window under 0.1 s is below what /proc's 10 ms CPU
# ticks can measure; an idle_after over a day is a boost that never ends.
_WINDOW_RANGE = (0.1, 60.0)
_IDLE_RANGE = (0.2, 86400.0)


class CmdlinePattern(Protocol):
    """A compiled cmdline regex: RE2's in the daemon; re.Pattern fits too (tests)."""

    @property
    def pattern(self) -> str: ...

    def search(self, text: str, /) -> object: ...


@dataclass(frozen=True)
class Re2Pattern:
    """A cmdline regex compiled by RE2: matching takes time linear in the text."""

    pattern: str
    _rx: Any = field(compare=False, repr=False)

    def search(self, text: str, /) -> bool:
        # Bytes in, so a lone surrogate in the text cannot make the UTF-8 encode fail.
        return self._rx.search(text.encode("utf-8", "replace")) is not None


def compile_cmdline(pattern: str) -> Re2Pattern:
    """Compile with RE2, never Python's re. ValueError with one line if RE2 refuses it."""
    if re2 is None or not hasattr(re2, "Options"):
        raise ValueError("cmdline regexes need the google-re2 package (import re2), which "
                         "is not installed: pip install 'google-re2>=1.1'")
    opts = re2.Options()
    opts.log_errors = False  # the error comes back to us; RE2 must not print it to stderr
    try:
        rx = re2.compile(pattern, opts)
    except re2.error as e:
        detail = e.args[0] if e.args else "rejected"
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        if _python_re_accepts(pattern):
            raise ValueError("cmdline regex uses a feature RE2 does not support "
                             f"(linear-time matching): {detail}") from None
        raise ValueError(f"cmdline regex is not valid: {detail}") from None
    except UnicodeError:
        raise ValueError("cmdline regex is not valid UTF-8 text") from None
    if isinstance(rx, re.Pattern) or type(rx).__module__.split(".")[0] != "re2":
        # Some packages named re2 fall back to Python's re, which can backtrack for ever.
        raise ValueError("the installed re2 module is not Google RE2 (it falls back to "
                         "Python's re): pip install 'google-re2>=1.1'")
    return Re2Pattern(pattern, rx)


def _python_re_accepts(pattern: str) -> bool:
    """Whether Python's re would compile it: only to tell 'unsupported' from 'broken'.

    The compiled object is thrown away; nothing is ever matched with Python's re.
    """
    try:
        re.compile(pattern)
    except Exception:  # re.error, RecursionError, OverflowError: all mean "no"
        return False
    return True


@dataclass(frozen=True)
class ProcessFacts:
    """What a rule can look at; the classifier fills it lazily-read fields as needed."""

    comm: str
    exe: str | None
    cmdline: str
    user: str | None
    uid: int
    cgroup: str
    parent_comm: str | None
    libraries: Callable[[], list[str]]  # basenames of mapped files, read only if a rule asks
    # Names of the AI runtimes the process maps (core/signatures.py), read only if asked.
    runtimes: Callable[[], list[str]] = list


@dataclass(frozen=True)
class Rule:
    name: str
    cls: str
    source: str  # "file:line"
    comm: tuple[str, ...] = ()
    exe: tuple[str, ...] = ()
    cmdline: CmdlinePattern | None = None
    user: tuple[str, ...] = ()
    cgroup: tuple[str, ...] = ()
    parent: tuple[str, ...] = ()
    library: tuple[str, ...] = ()
    runtime: tuple[str, ...] = ()  # globs on runtime names ("*": any AI runtime)

    def match(self, f: ProcessFacts) -> list[str]:
        """The conditions that matched, or [] when any condition fails."""
        why: list[str] = []
        if self.comm:
            if not _any_glob(f.comm, self.comm):
                return []
            why.append(f"comm={f.comm}")
        if self.exe:
            if f.exe is None or not _any_glob(f.exe, self.exe):
                return []
            why.append(f"exe={f.exe}")
        if self.cmdline is not None:
            if not self.cmdline.search(f.cmdline):
                return []
            why.append(f"cmdline~/{self.cmdline.pattern}/")
        if self.user:
            if (f.user or "") not in self.user and str(f.uid) not in self.user:
                return []
            why.append(f"user={f.user or f.uid}")
        if self.cgroup:
            if not _any_glob(f.cgroup, self.cgroup):
                return []
            why.append(f"cgroup={f.cgroup}")
        if self.parent:
            if f.parent_comm is None or not _any_glob(f.parent_comm, self.parent):
                return []
            why.append(f"parent={f.parent_comm}")
        if self.library:
            libs = f.libraries()
            hit = next((lib for lib in libs if _any_glob(lib, self.library)), None)
            if hit is None:
                return []
            why.append(f"library={hit}")
        if self.runtime:
            names = f.runtimes()
            hit = next((n for n in names if _any_glob(n, self.runtime)), None)
            if hit is None:
                return []
            why.append(f"runtime={hit}")
        return why


def _any_glob(value: str, pats: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(value, p) for p in pats)


def _is_threshold(v: Any) -> TypeGuard[int | float]:
    return isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 100


@dataclass
class RuleSet:
    classes: dict[str, ClassPolicy] = field(default_factory=dict)
    rules: list[Rule] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    # "file:line" where each setting was last set, for errors found in validate().
    setting_sources: dict[str, str] = field(default_factory=dict)
    # Who may ask for which class ([access.CLASS] tables).
    access: AccessPolicy = field(default_factory=AccessPolicy)
    # [[ignore]] tables: processes never touched, whatever else says. Later files first.
    ignores: list[Rule] = field(default_factory=list)
    # [guard]: the closed loop's settings (core/guard.py); later files change only the
    # keys they name.
    guard: GuardConfig = field(default_factory=GuardConfig)

    @property
    def uses_parent(self) -> bool:
        """Whether any rule looks at the parent's name (else nobody reads it)."""
        return any(r.parent for r in self.rules)

    def first_ignore(self, f: ProcessFacts) -> tuple[Rule, list[str]] | None:
        for rule in self.ignores:
            why = rule.match(f)
            if why:
                return rule, why
        return None

    def first_match(self, f: ProcessFacts) -> tuple[Rule, list[str]] | None:
        for rule in self.rules:
            why = rule.match(f)
            if why:
                return rule, why
        return None

    # Settings are type-checked when a file is parsed; these fall back to the default
    # rather than raise if something else put a bad value in ``settings``.
    @property
    def gpu_available_threshold(self) -> float:
        v = self.settings.get("gpu_available_threshold")
        return float(v) if _is_threshold(v) else _DEFAULT_THRESHOLD

    def _class_setting(self, key: str, default: str) -> str:
        v = self.settings.get(key)
        return v if isinstance(v, str) else default

    def _seconds_setting(self, key: str, default: float) -> float:
        v = self.settings.get(key)
        return v if isinstance(v, float) else default  # parsed to seconds at load

    @property
    def library_class(self) -> str:
        return self._class_setting("library_class", _DEFAULT_CLASS)

    @property
    def gpu_process_class(self) -> str:
        return self._class_setting("gpu_process_class", _DEFAULT_CLASS)

    @property
    def serving_class(self) -> str:
        """The class of an AI runtime process that shows it serves (a listening socket)."""
        return self._class_setting("serving_class", _DEFAULT_SERVING_CLASS)

    @property
    def active_cpu_percent(self) -> float:
        v = self.settings.get("active_cpu_percent")
        return float(v) if _is_cpu_percent(v) else _DEFAULT_ACTIVE_CPU_PERCENT

    @property
    def active_window(self) -> float:
        return self._seconds_setting("active_window", _DEFAULT_ACTIVE_WINDOW)

    @property
    def idle_after(self) -> float:
        return self._seconds_setting("idle_after", _DEFAULT_IDLE_AFTER)


def _is_cpu_percent(v: Any) -> TypeGuard[int | float]:
    # Percent of one CPU; above 100 means more than one core's worth.
    return isinstance(v, int | float) and not isinstance(v, bool) and 0 < v <= 100_000


def _as_tuple(v: Any, what: str) -> tuple[str, ...]:
    def ok(x: Any) -> bool:
        return isinstance(x, str | int) and not isinstance(x, bool)

    if ok(v):
        return (str(v),)
    if isinstance(v, list) and all(ok(x) for x in v):
        return tuple(str(x) for x in v)
    raise ValueError(f"{what} must be a string or a list of strings, not {v!r}")


# --- Finding the line of a table or key, so errors can name it ---

def _key_alt(name: str) -> str:
    """A regex for a TOML key written bare, "quoted" or 'literal'."""
    n = re.escape(name)
    # Bare only if TOML allows it bare: then no alternative can start with blank space,
    # and the \s* around it cannot backtrack over long lines.
    bare = f"{n}|" if re.fullmatch(r"[A-Za-z0-9_-]+", name) else ""
    return f"(?:{bare}\"{n}\"|'{n}')"


def _header_line(lines: list[str], path: list[str]) -> int | None:
    """1-based line of the [a.b] header for ``path``, or None."""
    pat = re.compile(r"^\s*\[\s*" + _dotted(path) + r"\s*\]")
    for i, line in enumerate(lines):
        if pat.match(line):
            return i + 1
    return None


def _dotted(path: list[str]) -> str:
    return r"\s*\.\s*".join(_key_alt(p) for p in path)


def _key_line(lines: list[str], table: list[str], key: str) -> int | None:
    """1-based line where ``key`` of [table] is set: in its own section, or dotted
    (``b.key =`` under [a]) in a parent's; else the table's own line; else None."""
    full = [*table, key]
    for k in range(len(table), -1, -1):  # the deepest header first
        head = _header_line(lines, table[:k]) if k else 0
        if head is None:
            continue
        pat = re.compile(r"^\s*" + _dotted(full[k:]) + r"\s*=")
        for i in range(head, len(lines)):
            if _ANY_HEADER.match(lines[i]):
                break
            if pat.match(lines[i]):
                return i + 1
    return _table_line(lines, table) if table else None


def _table_line(lines: list[str], table: list[str]) -> int | None:
    """1-based line of [table]'s header, or of the key that defines it inline."""
    head = _header_line(lines, table)
    if head is not None or not table:
        return head
    return _key_line(lines, table[:-1], table[-1])


_ANY_HEADER = re.compile(r"^\s*\[")


def _rule_header_lines(lines: list[str], table: str = "rule") -> list[int]:
    """Line numbers of each [[rule]] (or [[ignore]]) header, in order, so errors can name
    a line."""
    pat = re.compile(r"^\s*\[\[\s*" + _key_alt(table) + r"\s*\]\]")
    return [i + 1 for i, line in enumerate(lines) if pat.match(line)]


# --- Parsing ---

def parse_rules_text(text: str, source: str, into: RuleSet) -> None:
    """Parse one file's text on top of ``into``. Raises ConfigError naming source:line."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column \d+\)", str(e))
        where = f"{source}:{m.group(1)}" if m else source
        raise ConfigError(f"{where}: invalid TOML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{source}: invalid TOML: arrays or tables nested too deeply") from None
    except ValueError as e:  # e.g. an integer with more digits than Python converts
        raise ConfigError(f"{source}: invalid TOML: {str(e).split(';')[0]}") from None
    lines = text.splitlines()

    def at(table: list[str], key: str | None = None) -> str:
        """"source:line" of a key of [table], or of [table] itself."""
        line = _key_line(lines, table, key) if key is not None else _table_line(lines, table)
        return f"{source}:{line or 1}"

    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"{at([unknown[0]])}: unknown top-level table(s) {unknown}; "
                          f"allowed: {sorted(_TOP_KEYS)}")

    _parse_settings(data.get("settings", {}), at, into)
    _parse_classes(data.get("classes", {}), at, source, into)
    _parse_access(data.get("access", {}), at, into)
    raw_guard = data.get("guard", {})
    if not isinstance(raw_guard, dict):
        raise ConfigError(f"{at(['guard'])}: [guard] must be a table")
    try:
        into.guard = guard_config(raw_guard, into.guard)
    except BadGuardKey as e:
        raise ConfigError(f"{at(['guard'], e.key)}: {e}") from None

    raw_rules = data.get("rule", [])
    if not isinstance(raw_rules, list):
        raise ConfigError(f"{at(['rule'])}: 'rule' must be an array of tables ([[rule]])")
    # Later sources take precedence: their rules go first.
    into.rules[:0] = _parse_rule_array(raw_rules, "rule", lines, source)
    raw_ignores = data.get("ignore", [])
    if not isinstance(raw_ignores, list):
        raise ConfigError(f"{at(['ignore'])}: 'ignore' must be an array of tables "
                          "([[ignore]])")
    into.ignores[:0] = _parse_rule_array(raw_ignores, "ignore", lines, source)
    into.sources.append(source)


def _parse_rule_array(raw: list[Any], table: str, lines: list[str], source: str
                      ) -> list[Rule]:
    heads = _rule_header_lines(lines, table)
    out: list[Rule] = []
    for i, r in enumerate(raw):
        where = f"{source}:{heads[i] if i < len(heads) else 1}"
        try:
            out.append(_parse_rule(r, where, i, ignore=table == "ignore"))
        except (ValueError, TypeError) as e:
            label = r.get("name", f"#{i + 1}") if isinstance(r, dict) else f"#{i + 1}"
            raise ConfigError(f"{where}: {table} {label!r}: {e}") from None
    return out


def _parse_settings(settings: Any, at: Callable[..., str], into: RuleSet) -> None:
    if not isinstance(settings, dict):
        raise ConfigError(f"{at(['settings'])}: [settings] must be a table")
    bad = sorted(set(settings) - _SETTING_KEYS)
    if bad:
        raise ConfigError(f"{at(['settings'], bad[0])}: unknown setting(s) {bad}; "
                          f"allowed: {sorted(_SETTING_KEYS)}")
    for key, val in settings.items():
        where = at(["settings"], key)
        if key == "gpu_available_threshold":
            if not _is_threshold(val):
                raise ConfigError(f"{where}: setting {key} must be a number 0..100, not {val!r}")
        elif key == "active_cpu_percent":
            if not _is_cpu_percent(val):
                raise ConfigError(f"{where}: setting {key} must be a number above 0 (percent "
                                  f"of one CPU, e.g. 2.0), not {val!r}")
        elif key in _DURATION_SETTINGS:
            lo, hi = _WINDOW_RANGE if key == "active_window" else _IDLE_RANGE
            val = _duration_setting(val, key, where, lo, hi)
        elif not isinstance(val, str):
            raise ConfigError(f"{where}: setting {key} must be the name of a class "
                              f"(a string), not {val!r}")
        into.settings[key] = val
        into.setting_sources[key] = where


def _duration_setting(val: Any, key: str, where: str, lo: float, hi: float) -> float:
    """Seconds from a number or a duration text like "30s" / "250ms", within [lo, hi]."""
    from ainative.units import UnitError, parse_duration

    secs: float | None = None
    if isinstance(val, int | float) and not isinstance(val, bool):
        secs = float(val)
    elif isinstance(val, str):
        try:
            secs = parse_duration(val, key)
        except UnitError:
            secs = None
    if secs is None or not lo <= secs <= hi:
        raise ConfigError(f"{where}: setting {key} must be a duration from {lo:g} s to "
                          f"{hi:g} s (a number of seconds or text like \"30s\"), not {val!r}")
    return secs


def _parse_classes(classes: Any, at: Callable[..., str], source: str, into: RuleSet) -> None:
    if not isinstance(classes, dict):
        raise ConfigError(f"{at(['classes'])}: [classes] must be a table of tables")
    for name, table in classes.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{at(['classes'], name)}: class {name!r} must be a table")
        if name == OPT_OUT:
            raise ConfigError(f"{at(['classes', name])}: {OPT_OUT!r} cannot be a class: "
                              f"AINATIVE_CLASS={OPT_OUT} means never touched")
        try:
            into.classes[name] = class_from_table(name, table, into.classes.get(name))
        except BadClassKey as e:
            raise ConfigError(f"{at(['classes', name], e.key)}: {e}") from None
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{at(['classes', name])}: {e}") from None


def _id_list(v: Any) -> frozenset[str | int] | None:
    """A users/groups list as a set, or None if it is not a list of names and ids."""
    if not isinstance(v, list):
        return None
    out: set[str | int] = set()
    for x in v:
        if isinstance(x, bool):
            return None
        if isinstance(x, int) and 0 <= x <= _MAX_ID:
            out.add(x)
        elif isinstance(x, str) and 0 < len(x) <= 256 and "\0" not in x:
            out.add(x)
        else:
            return None
    return frozenset(out)


def _parse_access(access: Any, at: Callable[..., str], into: RuleSet) -> None:
    if not isinstance(access, dict):
        raise ConfigError(f"{at(['access'])}: [access] must be a table of "
                          "[access.CLASS] tables")
    for name, table in access.items():
        head = at(["access", name])
        if not isinstance(table, dict):
            raise ConfigError(f"{at(['access'], name)}: [access.{name}] must be a table "
                              "with users and/or groups")
        bad = sorted(set(table) - _ACCESS_KEYS)
        if bad:
            raise ConfigError(f"{at(['access', name], bad[0])}: [access.{name}]: unknown "
                              f"key(s) {bad}; allowed: {sorted(_ACCESS_KEYS)}")
        got: dict[str, frozenset[str | int]] = {}
        for key, what in (("users", "user names or uids"), ("groups", "group names or gids")):
            if key not in table:
                continue
            ids = _id_list(table[key])
            if ids is None:
                raise ConfigError(f"{at(['access', name], key)}: [access.{name}] {key} must "
                                  f"be a list of {what}, not {table[key]!r}")
            got[key] = ids
        into.access.add(name, Grant(got.get("users", frozenset()),
                                    got.get("groups", frozenset()), head))


def _parse_rule(r: Any, where: str, i: int, ignore: bool = False) -> Rule:
    if not isinstance(r, dict):
        raise ValueError("must be a table")
    allowed = _IGNORE_KEYS if ignore else _RULE_KEYS
    unknown = set(r) - allowed
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    if not ignore and ("class" not in r or not isinstance(r["class"], str)):
        raise ValueError("needs a class = \"...\"")
    if "name" in r and not isinstance(r["name"], str):
        raise ValueError(f"name must be a string, not {r['name']!r}")
    if not _CONDITION_KEYS & set(r):
        raise ValueError(f"matches nothing: give at least one of {sorted(_CONDITION_KEYS)}")
    cmd = r.get("cmdline")
    if cmd is not None and not isinstance(cmd, str):
        raise ValueError("cmdline must be one regular expression (a string)")
    return Rule(
        name=str(r.get("name", f"{'ignore' if ignore else 'rule'} {i + 1}")),
        cls="" if ignore else r["class"],
        source=where,
        comm=_as_tuple(r["comm"], "comm") if "comm" in r else (),
        exe=_as_tuple(r["exe"], "exe") if "exe" in r else (),
        cmdline=compile_cmdline(cmd) if cmd is not None else None,
        user=_as_tuple(r["user"], "user") if "user" in r else (),
        cgroup=_as_tuple(r["cgroup"], "cgroup") if "cgroup" in r else (),
        parent=_as_tuple(r["parent"], "parent") if "parent" in r else (),
        library=_as_tuple(r["library"], "library") if "library" in r else (),
        runtime=_as_tuple(r["runtime"], "runtime") if "runtime" in r else (),
    )


# --- Reading files: regular, trusted, bounded, never blocking ---



# Open flags that keep a rule file's open from blocking or taking a terminal (POSIX only).
_NO_SIDE_EFFECTS = (getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
                    | getattr(os, "O_NOCTTY", 0))


def _check_trusted(path: str, st: os.stat_result, what: str) -> None:
    """Refuse a file or directory that someone other than root (or us) could change.
    (Windows has no uids or mode bits: there the file's ACL decides who may change it.)"""
    if sys.platform == "win32":
        return
    if st.st_uid not in (0, os.geteuid()):
        raise ConfigError(f"{path}: {what} is owned by {user_label(st.st_uid)}, and only root's "
                          f"rule files are trusted; fix: chown root {path}")
    if st.st_mode & 0o022:
        who = " and ".join(w for w, bit in (("group", 0o020), ("others", 0o002))
                           if st.st_mode & bit)
        raise ConfigError(f"{path}: {what} is writable by {who} "
                          f"(mode {stat.S_IMODE(st.st_mode):04o}), so anyone could change "
                          f"the rules; fix: chmod go-w {path}")


def _check_regular(path: str, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{path}: not a regular file ({file_kind(st.st_mode)}); "
                          "rule files must be regular files")


def _read(path: str, dir_fd: int | None = None, name: str | None = None) -> str:
    """Read one rule file. ``name`` relative to ``dir_fd`` if given, else ``path``."""
    target = name if name is not None else path
    try:
        # stat first: opening a device can have side effects (a watchdog, a tape).
        _check_regular(path, os.stat(target, dir_fd=dir_fd))
        fd = os.open(target, os.O_RDONLY | _NO_SIDE_EFFECTS, dir_fd=dir_fd)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read rule file: {e.strerror or e}") from None
    try:
        # The path may have been swapped since the stat: what counts is the open file.
        st = os.fstat(fd)
        _check_regular(path, st)
        _check_trusted(path, st, "rule file")
        if st.st_size > MAX_RULE_FILE:
            raise ConfigError(f"{path}: rule file is {st.st_size} bytes, larger than the "
                              f"limit of {MAX_RULE_FILE}; split it into several files")
        chunks: list[bytes] = []
        total = 0
        while True:
            b = os.read(fd, min(1 << 16, MAX_RULE_FILE + 1 - total))
            if not b:
                break
            chunks.append(b)
            total += len(b)
            if total > MAX_RULE_FILE:
                raise ConfigError(f"{path}: rule file larger than the limit of "
                                  f"{MAX_RULE_FILE} bytes; split it into several files")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read rule file: {e.strerror or e}") from None
    finally:
        os.close(fd)
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text: {e}") from None


def _read_dir(rules_dir: str) -> list[tuple[str, str]]:
    """(path, text) of each rules_dir/*.toml, sorted; [] if the directory does not exist."""
    try:
        dfd = os.open(rules_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    except OSError as e:
        if e.errno == errno.ENOTDIR:
            raise ConfigError(f"{rules_dir}: rules directory is not a directory") from None
        raise ConfigError(f"{rules_dir}: cannot read rules directory: "
                          f"{e.strerror or e}") from None
    try:
        _check_trusted(rules_dir, os.fstat(dfd), "rules directory")
        try:
            names = sorted(n for n in os.listdir(dfd)
                           if n.endswith(".toml") and not n.startswith("."))
        except OSError as e:
            raise ConfigError(f"{rules_dir}: cannot read rules directory: "
                              f"{e.strerror or e}") from None
        return [(p, _read(p, dfd, n)) for n in names for p in [os.path.join(rules_dir, n)]]
    finally:
        os.close(dfd)


def builtin_rules_text() -> str:
    return resources.files("ainative.data").joinpath("default_rules.toml").read_text("utf-8")


def load_rules(
    extra: Iterable[str] = (),
    rules_dir: str | None = DEFAULT_RULES_DIR,
    builtin: bool = True,
) -> RuleSet:
    """Built-in rules, then rules_dir/*.toml, then each extra file. Validates the result."""
    rs = RuleSet()
    if builtin:
        parse_rules_text(builtin_rules_text(), "<built-in rules>", rs)
    files = _read_dir(rules_dir) if rules_dir else []
    for p in extra:
        files.append((p, _read(p)))
    for p, text in files:
        parse_rules_text(text, p, rs)
    validate(rs)
    return rs


def validate(rs: RuleSet) -> None:
    """Checks that need every file: names of classes that rules, settings and grants use."""
    defined = ", ".join(sorted(rs.classes)) or "none"
    for rule in rs.rules:
        if rule.cls not in rs.classes:
            raise ConfigError(
                f"{rule.source}: rule {rule.name!r} names class {rule.cls!r}, "
                f"which is not defined (classes: {defined})"
            )
    for key in sorted(_CLASS_SETTINGS):
        cls = rs.settings.get(key)
        if cls is not None and cls not in rs.classes:
            where = rs.setting_sources.get(key, "<settings>")
            raise ConfigError(f"{where}: setting {key} names class {cls!r}, which is not "
                              f"defined (classes: {defined})")
    for name, grant in rs.access.grants.items():
        if name not in rs.classes and name != OPT_OUT:
            raise ConfigError(f"{grant.source or '<access>'}: [access.{name}] grants class "
                              f"{name!r}, which is not defined (classes: {defined})")
