"""Rule files in TOML: classes, settings and [[rule]] tables.

Order of sources: the built-in file, then /etc/ainative/rules.d/*.toml (sorted), then each
``--rules`` file. A later source may redefine a class (only the keys it names) or a
setting; its rules are tried before earlier sources' rules; inside one file the first
matching rule wins.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from ainative.core.classes import ClassPolicy, ConfigError, class_from_table

DEFAULT_RULES_DIR = "/etc/ainative/rules.d"
MAX_RULE_FILE = 1 << 20

_RULE_KEYS = {"name", "class", "comm", "exe", "cmdline", "user", "cgroup", "parent", "library"}
_SETTING_KEYS = {"gpu_available_threshold", "library_class", "gpu_process_class"}


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


@dataclass(frozen=True)
class Rule:
    name: str
    cls: str
    source: str  # "file:line"
    comm: tuple[str, ...] = ()
    exe: tuple[str, ...] = ()
    cmdline: re.Pattern[str] | None = None
    user: tuple[str, ...] = ()
    cgroup: tuple[str, ...] = ()
    parent: tuple[str, ...] = ()
    library: tuple[str, ...] = ()

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
        return why


def _any_glob(value: str, pats: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(value, p) for p in pats)


@dataclass
class RuleSet:
    classes: dict[str, ClassPolicy] = field(default_factory=dict)
    rules: list[Rule] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)

    @property
    def uses_parent(self) -> bool:
        """Whether any rule looks at the parent's name (else nobody reads it)."""
        return any(r.parent for r in self.rules)

    def first_match(self, f: ProcessFacts) -> tuple[Rule, list[str]] | None:
        for rule in self.rules:
            why = rule.match(f)
            if why:
                return rule, why
        return None

    @property
    def gpu_available_threshold(self) -> float:
        return float(self.settings.get("gpu_available_threshold", 50.0))

    @property
    def library_class(self) -> str:
        return str(self.settings.get("library_class", "inference"))

    @property
    def gpu_process_class(self) -> str:
        return str(self.settings.get("gpu_process_class", "inference"))


def _as_tuple(v: Any, what: str) -> tuple[str, ...]:
    if isinstance(v, str):
        return (v,)
    if isinstance(v, list) and all(isinstance(x, str | int) for x in v):
        return tuple(str(x) for x in v)
    if isinstance(v, int):
        return (str(v),)
    raise ValueError(f"{what} must be a string or a list of strings")


def _rule_header_lines(text: str) -> list[int]:
    """Line numbers of each [[rule]] header, in order, so errors can name a line."""
    lines = text.splitlines()
    return [i + 1 for i, line in enumerate(lines) if line.strip().startswith("[[rule]]")]


def _class_header_line(text: str, name: str) -> int:
    pat = re.compile(r"^\s*\[classes\.(\"?)" + re.escape(name) + r"\1\]")
    for i, line in enumerate(text.splitlines()):
        if pat.match(line):
            return i + 1
    return 1


def parse_rules_text(text: str, source: str, into: RuleSet) -> None:
    """Parse one file's text on top of ``into``. Raises ConfigError naming source:line."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: invalid TOML: {e}") from e
    unknown = set(data) - {"classes", "rule", "settings"}
    if unknown:
        raise ConfigError(f"{source}:1: unknown top-level table(s) {sorted(unknown)}")

    settings = data.get("settings", {})
    if not isinstance(settings, dict):
        raise ConfigError(f"{source}: [settings] must be a table")
    bad = set(settings) - _SETTING_KEYS
    if bad:
        raise ConfigError(f"{source}: unknown setting(s) {sorted(bad)}")
    into.settings.update(settings)

    classes = data.get("classes", {})
    if not isinstance(classes, dict):
        raise ConfigError(f"{source}: [classes] must be a table of tables")
    for name, table in classes.items():
        line = _class_header_line(text, name)
        if not isinstance(table, dict):
            raise ConfigError(f"{source}:{line}: class {name!r} must be a table")
        try:
            into.classes[name] = class_from_table(name, table, into.classes.get(name))
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{source}:{line}: {e}") from e

    raw_rules = data.get("rule", [])
    if not isinstance(raw_rules, list):
        raise ConfigError(f"{source}: 'rule' must be an array of tables ([[rule]])")
    lines = _rule_header_lines(text)
    new_rules: list[Rule] = []
    for i, r in enumerate(raw_rules):
        line = lines[i] if i < len(lines) else 1
        where = f"{source}:{line}"
        try:
            new_rules.append(_parse_rule(r, where, i))
        except (ValueError, TypeError, re.error) as e:
            label = r.get("name", f"#{i + 1}") if isinstance(r, dict) else f"#{i + 1}"
            raise ConfigError(f"{where}: rule {label!r}: {e}") from e
    # Later sources take precedence: their rules go first.
    into.rules[:0] = new_rules
    into.sources.append(source)


def _parse_rule(r: Any, where: str, i: int) -> Rule:
    if not isinstance(r, dict):
        raise ValueError("must be a table")
    unknown = set(r) - _RULE_KEYS
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)}; allowed: {sorted(_RULE_KEYS)}")
    if "class" not in r or not isinstance(r["class"], str):
        raise ValueError("needs a class = \"...\"")
    conds = _RULE_KEYS - {"name", "class"}
    if not conds & set(r):
        raise ValueError(f"matches nothing: give at least one of {sorted(conds)}")
    cmd = r.get("cmdline")
    if cmd is not None and not isinstance(cmd, str):
        raise ValueError("cmdline must be one regular expression (a string)")
    return Rule(
        name=str(r.get("name", f"rule {i + 1}")),
        cls=r["class"],
        source=where,
        comm=_as_tuple(r["comm"], "comm") if "comm" in r else (),
        exe=_as_tuple(r["exe"], "exe") if "exe" in r else (),
        cmdline=re.compile(cmd) if cmd is not None else None,
        user=_as_tuple(r["user"], "user") if "user" in r else (),
        cgroup=_as_tuple(r["cgroup"], "cgroup") if "cgroup" in r else (),
        parent=_as_tuple(r["parent"], "parent") if "parent" in r else (),
        library=_as_tuple(r["library"], "library") if "library" in r else (),
    )


def _read(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_RULE_FILE + 1)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read rule file: {e.strerror or e}") from e
    if len(raw) > MAX_RULE_FILE:
        raise ConfigError(f"{path}: rule file larger than {MAX_RULE_FILE} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text: {e}") from e


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
    paths: list[str] = []
    if rules_dir and os.path.isdir(rules_dir):
        paths.extend(sorted(glob.glob(os.path.join(rules_dir, "*.toml"))))
    paths.extend(extra)
    for p in paths:
        parse_rules_text(_read(p), p, rs)
    validate(rs)
    return rs


def validate(rs: RuleSet) -> None:
    for rule in rs.rules:
        if rule.cls not in rs.classes:
            raise ConfigError(
                f"{rule.source}: rule {rule.name!r} names class {rule.cls!r}, "
                f"which is not defined (classes: {', '.join(sorted(rs.classes))})"
            )
    for key in ("library_class", "gpu_process_class"):
        cls = rs.settings.get(key)
        if cls is not None and cls not in rs.classes:
            raise ConfigError(f"setting {key} names undefined class {cls!r}")
