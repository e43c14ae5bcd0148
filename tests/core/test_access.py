"""Who may ask for a class: privileged_reasons, AccessPolicy.check and [access] tables."""

from __future__ import annotations

import grp
import os
import pwd
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ainative.core import access
from ainative.core.access import AccessPolicy, Grant, privileged_reasons
from ainative.core.classes import ClassPolicy, ConfigError, class_from_table
from ainative.core.rules import load_rules

UNKNOWN_UID = 3_999_999  # no such user on a test machine


def cls(**t: object) -> ClassPolicy:
    return class_from_table("c", dict(t))


def write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


# --- privileged_reasons ----------------------------------------------------------------

def test_builtin_inference_is_privileged_and_the_others_are_not() -> None:
    rs = load_rules(rules_dir=None)
    assert privileged_reasons(rs.classes["inference"]) == [
        "serving (others' background and training yield to it while it is busy)"]
    assert privileged_reasons(rs.classes["training"]) == []
    assert privileged_reasons(rs.classes["background"]) == []


@pytest.mark.parametrize("table, reason", [
    ({"nice": -1}, "nice -1 (below 0)"),
    ({"policy": "fifo", "rt_priority": 10}, "policy fifo (realtime)"),
    ({"policy": "rr", "rt_priority": 1}, "policy rr (realtime)"),
    ({"ioprio": "rt:3"}, "ioprio rt:3 (realtime I/O)"),
    ({"cgroup": True, "cpu_weight": 101}, "cpu_weight 101 (above the default 100)"),
    ({"cgroup": True, "memory_low": "1G"}, "memory_low 1073741824 bytes (above 0)"),
    ({"cgroup": True, "cpuset": "0-1"}, "cpuset 0-1 (reserved cores)"),
    ({"serving": True}, "serving (others' background and training yield to it while it is busy)"),
])
def test_each_privileged_knob_is_named(table: dict[str, object], reason: str) -> None:
    assert privileged_reasons(cls(**table)) == [reason]


@pytest.mark.parametrize("table", [
    {"nice": 0}, {"nice": 19}, {"policy": "batch"}, {"policy": "idle"}, {"policy": "other"},
    {"ioprio": "be:0"}, {"ioprio": "idle"}, {"cgroup": True, "cpu_weight": 100},
    {"cgroup": True, "cpu_weight": 1, "cpu_idle": True}, {"affinity": "0"},
    {"cgroup": True, "memory_low": 0}, {},
])
def test_lowering_priority_is_not_privileged(table: dict[str, object]) -> None:
    assert privileged_reasons(cls(**table)) == []


def test_is_realtime_is_cpu_only_and_uses_rt_io_is_io_only() -> None:
    io = cls(ioprio="rt:0")
    assert io.uses_rt_io and not io.is_realtime
    cpu = cls(policy="fifo", rt_priority=5)
    assert cpu.is_realtime and not cpu.uses_rt_io
    assert not cls(ioprio="be:0").uses_rt_io and not cls().uses_rt_io


# --- AccessPolicy.check without real users ------------------------------------------------

def test_root_may_ask_for_anything_and_anyone_for_an_unprivileged_class() -> None:
    pol = AccessPolicy()
    rt = cls(policy="fifo", rt_priority=50, nice=-20)
    assert pol.check(rt, 0) is None
    assert pol.check(cls(nice=10, policy="batch"), UNKNOWN_UID) is None


def test_refusal_says_who_what_why_and_the_fix() -> None:
    inference = load_rules(rules_dir=None).classes["inference"]
    msg = AccessPolicy().check(inference, UNKNOWN_UID)
    assert msg == (f"uid {UNKNOWN_UID} may not ask for class 'inference': serving (others' "
                   "background and training yield to it while it is busy) needs root or a "
                   "grant; add them to [access.inference] users or groups in a rule file")
    one = class_from_table("my class", {"nice": -1})
    assert AccessPolicy().check(one, UNKNOWN_UID) == (
        f"uid {UNKNOWN_UID} may not ask for class 'my class': nice -1 (below 0) needs root "
        'or a grant; add them to [access."my class"] users or groups in a rule file')


def test_refusal_names_a_known_user() -> None:
    nobody = pwd.getpwnam("nobody")
    msg = AccessPolicy().check(cls(nice=-5), nobody.pw_uid)
    assert msg is not None and msg.startswith(f"uid {nobody.pw_uid} (nobody) may not ask")


def test_grant_by_uid_allows_only_that_uid_and_that_class() -> None:
    pol = AccessPolicy({"c": Grant(users=frozenset({UNKNOWN_UID}))})
    c = cls(nice=-5)
    assert pol.check(c, UNKNOWN_UID) is None
    assert pol.check(c, UNKNOWN_UID + 1) is not None
    other = class_from_table("d", {"nice": -5})
    assert pol.check(other, UNKNOWN_UID) is not None


def test_unknown_uid_has_no_groups() -> None:
    # gid 0 granted; an unknown uid is in no group, so it is still refused.
    pol = AccessPolicy({"c": Grant(groups=frozenset({0, "root"}))})
    assert pol.check(cls(nice=-5), UNKNOWN_UID) is not None


# --- AccessPolicy.check with real users and groups ----------------------------------------

@dataclass
class Account:
    user: str
    uid: int
    group: str  # supplementary
    gid: int
    primary: str  # primary group
    primary_gid: int
    other: str  # a group the user is not in
    other_gid: int


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)


@pytest.fixture
def account() -> Iterator[Account]:
    if os.geteuid() != 0:
        pytest.skip("creating a user and groups needs root")
    if not all(shutil.which(t) for t in ("useradd", "groupadd", "userdel", "groupdel")):
        pytest.skip("useradd/groupadd are not installed")
    tag = secrets.token_hex(4)
    user, group, primary, other = (f"ainative-t-{tag}", f"ainative-t-{tag}-s",
                                   f"ainative-t-{tag}-p", f"ainative-t-{tag}-o")
    made_groups: list[str] = []
    made_user = False
    try:
        for g in (group, primary, other):
            _run("groupadd", g)
            made_groups.append(g)
        _run("useradd", "-M", "-N", "-s", "/usr/sbin/nologin", "-g", primary, "-G", group,
             user)
        made_user = True
        access.clear_cache()
        yield Account(user, pwd.getpwnam(user).pw_uid, group, grp.getgrnam(group).gr_gid,
                      primary, grp.getgrnam(primary).gr_gid, other, grp.getgrnam(other).gr_gid)
    finally:
        if made_user:
            subprocess.run(["userdel", user], capture_output=True, timeout=60, check=False)
        for g in made_groups:
            subprocess.run(["groupdel", g], capture_output=True, timeout=60, check=False)
        access.clear_cache()


def test_real_user_refused_without_grant(account: Account) -> None:
    msg = AccessPolicy().check(cls(nice=-5), account.uid)
    assert msg is not None
    assert msg.startswith(f"uid {account.uid} ({account.user}) may not ask for class 'c'")


@pytest.mark.parametrize("how", ["user name", "uid", "supplementary group name",
                                 "supplementary gid", "primary group name", "primary gid"])
def test_real_user_allowed_by_grant(account: Account, how: str) -> None:
    entry: dict[str, str | int] = {
        "user name": account.user, "uid": account.uid,
        "supplementary group name": account.group, "supplementary gid": account.gid,
        "primary group name": account.primary, "primary gid": account.primary_gid}
    g = (Grant(users=frozenset({entry[how]})) if how in ("user name", "uid")
         else Grant(groups=frozenset({entry[how]})))
    assert AccessPolicy({"c": g}).check(cls(nice=-5), account.uid) is None


def test_real_user_not_in_granted_group_is_refused(account: Account) -> None:
    pol = AccessPolicy({"c": Grant(groups=frozenset({account.other, account.other_gid}))})
    assert pol.check(cls(nice=-5), account.uid) is not None


def test_user_added_to_a_group_is_seen(account: Account) -> None:
    pol = AccessPolicy({"c": Grant(groups=frozenset({account.other}))})
    assert pol.check(cls(nice=-5), account.uid) is not None
    _run("usermod", "-a", "-G", account.other, account.user)
    access.clear_cache()
    assert pol.check(cls(nice=-5), account.uid) is None
    assert access.LOOKUP_TTL_S <= 5  # without clear_cache, seen within seconds


def test_grant_from_a_rule_file_allows_a_real_user(tmp_path: Path, account: Account) -> None:
    inference = load_rules(rules_dir=None)
    assert inference.access.check(inference.classes["inference"], account.uid) is not None
    p = write(tmp_path, "a.toml", f'[access.inference]\ngroups = ["{account.group}"]\n')
    rs = load_rules([p], rules_dir=None)
    assert rs.access.check(rs.classes["inference"], account.uid) is None


# --- [access] tables in rule files --------------------------------------------------------

def test_access_tables_from_several_files_are_united(tmp_path: Path) -> None:
    a = write(tmp_path, "a.toml", '[access.inference]\nusers = ["svc-ml", 1001]\n'
              'groups = ["ml"]\n')
    b = write(tmp_path, "b.toml", '[access.inference]\nusers = [1002]\n\n'
              '[access.training]\ngroups = [50]\n')
    rs = load_rules([a, b], rules_dir=None)
    assert rs.access.grants["inference"].users == {"svc-ml", 1001, 1002}
    assert rs.access.grants["inference"].groups == {"ml"}
    assert rs.access.grants["training"].groups == {50}
    assert rs.access.grants["inference"].source == f"{a}:1"
    assert rs.access.check(rs.classes["inference"], 1002) is None
    assert rs.access.check(rs.classes["inference"], 1003) is not None


def test_builtin_rules_grant_nothing() -> None:
    assert load_rules(rules_dir=None).access.grants == {}


def test_access_for_a_class_defined_in_a_later_file_is_fine(tmp_path: Path) -> None:
    a = write(tmp_path, "a.toml", "[access.gold]\nusers = [1001]\n")
    b = write(tmp_path, "b.toml", "[classes.gold]\nnice = -3\n")
    rs = load_rules([a, b], rules_dir=None)
    assert rs.access.check(rs.classes["gold"], 1001) is None


@pytest.mark.parametrize("text, line, message", [
    ('\n[access.nosuch]\nusers = ["a"]\n', 2,
     "[access.nosuch] grants class 'nosuch', which is not defined (classes: background, "
     "batch, inference, training)"),
    ('[access.inference]\nusers = ["a"]\nwho = 1\n', 3,
     "[access.inference]: unknown key(s) ['who']; allowed: ['groups', 'users']"),
    ('[access.inference]\nusers = "alice"\n', 2,
     "[access.inference] users must be a list of user names or uids, not 'alice'"),
    ('[access.inference]\n\ngroups = [true]\n', 3,
     "[access.inference] groups must be a list of group names or gids, not [True]"),
    ("[access.inference]\nusers = [-1]\n", 2,
     "[access.inference] users must be a list of user names or uids"),
    ('[access.inference]\nusers = [""]\n', 2,
     "[access.inference] users must be a list of user names or uids"),
    ("[access.inference]\nusers = [[1]]\n", 2,
     "[access.inference] users must be a list of user names or uids"),
    ("\naccess.inference = 3\n", 2, "[access.inference] must be a table"),
    ("\naccess = [1]\n", 2, "[access] must be a table of [access.CLASS] tables"),
])
def test_bad_access_table_names_file_and_line(tmp_path: Path, text: str, line: int,
                                              message: str) -> None:
    p = write(tmp_path, "a.toml", text)
    with pytest.raises(ConfigError) as e:
        load_rules([p], rules_dir=None)
    assert str(e.value).startswith(f"{p}:{line}: {message}"), str(e.value)
