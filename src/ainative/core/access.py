"""Who may ask for a class: the ``[access]`` tables of rule files.

A process can ask for a class itself (a socket registration, or AINATIVE_CLASS in its
environment). Asking for a class that only lowers the process's priority is open to
anyone: a user may do that to their own processes without ainative. Asking for a class
that raises it (nice below 0, a realtime policy, more CPU weight than the default, reserved
cores, protected memory) needs root or a grant::

    [access.inference]
    users = ["svc-ml", 1001]   # user names or uids
    groups = ["ml"]            # group names or gids (primary or supplementary)
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field

from ainative.core.classes import ClassPolicy, format_ioprio

if sys.platform != "win32":  # Windows has no uids or groups: grants by user id only
    import grp
    import pwd
from ainative.platform.base import IOPRIO_CLASS_BY_NAME, POLICY_NAMES, SCHED_BATCH, SCHED_IDLE

# The value of AINATIVE_CLASS that asks never to be touched, and the [access] table that
# lets users opt out of demotions too. No class may take this name.
OPT_OUT = "none"
# The kernel's default cpu.weight for a cgroup; above it a group gets more than its share.
DEFAULT_CPU_WEIGHT = 100
# Group and user lookups go through NSS (maybe LDAP); remember them this long. Short, so
# that a user added to a group (or a test that adds one) is seen within seconds.
LOOKUP_TTL_S = 2.0
_CACHE_MAX = 1024


def privileged_reasons(cls: ClassPolicy) -> list[str]:
    """What in ``cls`` a user could not do to their own process without root.

    Lowering priority (nice >= 0, batch or idle policy, be or idle I/O, cpu_weight up to
    the default, cpu_idle, an affinity) is not privileged.
    """
    out: list[str] = []
    if cls.nice is not None and cls.nice < 0:
        out.append(f"nice {cls.nice} (below 0)")
    if cls.is_realtime and cls.policy is not None:
        out.append(f"policy {POLICY_NAMES.get(cls.policy, cls.policy)} (realtime)")
    if cls.guard_realtime is not None:
        out.append(f"guard_realtime {cls.guard_realtime} (realtime when the loop escalates)")
    if cls.uses_rt_io and cls.ioprio is not None:
        out.append(f"ioprio rt:{cls.ioprio[1]} (realtime I/O)")
    # Counted whether or not the class sets cgroup = true: refusing too much is safer.
    if cls.cpu_weight is not None and cls.cpu_weight > DEFAULT_CPU_WEIGHT:
        out.append(f"cpu_weight {cls.cpu_weight} (above the default {DEFAULT_CPU_WEIGHT})")
    if cls.memory_low is not None and cls.memory_low > 0:
        out.append(f"memory_low {cls.memory_low} bytes (above 0)")
    if cls.cpuset is not None:
        out.append(f"cpuset {cls.cpuset} (reserved cores)")
    if cls.priority_class in ("above_normal", "high", "realtime"):
        out.append(f"priority_class {cls.priority_class} (above normal)")
    if cls.thread_priority is not None and cls.thread_priority > 0:
        out.append(f"thread_priority {cls.thread_priority} (above normal)")
    # A serving class raises nothing of its own process, but while it is busy every
    # only_while_serving_active class (other users' builds, training) is demoted for it.
    if cls.serving:
        out.append("serving (others' background and training yield to it while it is busy)")
    return out


def lowering_reasons(cls: ClassPolicy) -> list[str]:
    """What in ``cls`` lowers a process below the kernel's defaults. Opting out of such a
    class (AINATIVE_CLASS=none) would win its owner CPU that the rules withhold, so it
    needs root or a grant ([access.none]) like a boost does."""
    out: list[str] = []
    if cls.nice is not None and cls.nice > 0:
        out.append(f"nice {cls.nice}")
    if cls.policy is not None and cls.policy in (SCHED_BATCH, SCHED_IDLE):
        out.append(f"policy {POLICY_NAMES.get(cls.policy, cls.policy)}")
    if cls.ioprio is not None and (cls.ioprio[0] == IOPRIO_CLASS_BY_NAME["idle"] or (
            cls.ioprio[0] == IOPRIO_CLASS_BY_NAME["be"] and cls.ioprio[1] > 4)):
        out.append(f"ioprio {format_ioprio(cls.ioprio)}")
    if cls.cgroup and cls.cpu_weight is not None and cls.cpu_weight < DEFAULT_CPU_WEIGHT:
        out.append(f"cpu_weight {cls.cpu_weight}")
    if cls.cgroup and cls.cpu_idle:
        out.append("cpu_idle")
    if cls.priority_class in ("idle", "below_normal"):
        out.append(f"priority_class {cls.priority_class}")
    if cls.thread_priority is not None and cls.thread_priority < 0:
        out.append(f"thread_priority {cls.thread_priority}")
    return out


@dataclass(frozen=True)
class Grant:
    """Users and groups that may ask for one class. Names are str, ids are int."""

    users: frozenset[str | int] = frozenset()
    groups: frozenset[str | int] = frozenset()
    source: str = ""  # "file:line" of the first table that granted the class

    def union(self, other: Grant) -> Grant:
        return Grant(self.users | other.users, self.groups | other.groups,
                     self.source or other.source)


@dataclass
class AccessPolicy:
    """The grants of all rule files, by class name."""

    grants: dict[str, Grant] = field(default_factory=dict)

    def add(self, cls_name: str, grant: Grant) -> None:
        """Add a grant; a later file adds to what earlier files granted the same class."""
        old = self.grants.get(cls_name)
        self.grants[cls_name] = grant if old is None else old.union(grant)

    def granted(self, cls_name: str, uid: int) -> bool:
        """Whether a grant for ``cls_name`` names this uid, its user or one of its groups."""
        g = self.grants.get(cls_name)
        if g is None:
            return False
        name, gids = _identity(uid)
        if uid in g.users or (name is not None and name in g.users):
            return True
        for want in g.groups:
            gid = want if isinstance(want, int) else _group_gid(want)
            if gid is not None and gid in gids:
                return True
        return False

    def check(self, cls: ClassPolicy, uid: int) -> str | None:
        """None when ``uid`` may ask for ``cls``; else one line: who, what, why, the fix."""
        if uid == 0:
            return None
        reasons = privileged_reasons(cls)
        if not reasons or self.granted(cls.name, uid):
            return None
        name, _ = _identity(uid)
        who = f"uid {uid} ({name})" if name is not None else f"uid {uid}"
        verb = "needs" if len(reasons) == 1 else "need"
        return (f"{who} may not ask for class {cls.name!r}: {', '.join(reasons)} {verb} root "
                f"or a grant; add them to [access.{_toml_key(cls.name)}] users or groups "
                "in a rule file")


    def check_opt_out(self, cls: ClassPolicy, uid: int) -> str | None:
        """None when ``uid`` may opt its process out of ``cls`` (AINATIVE_CLASS=none);
        else one line saying why not. Opting out of a boost (or of a class that changes
        nothing) is open to anyone; opting out of a demotion needs root or [access.none]."""
        if uid == 0:
            return None
        reasons = lowering_reasons(cls)
        if not reasons or self.granted(OPT_OUT, uid):
            return None
        name, _ = _identity(uid)
        who = f"uid {uid} ({name})" if name is not None else f"uid {uid}"
        return (f"{who} may not opt out of class {cls.name!r} ({', '.join(reasons)}), which "
                "the rules give its process: that needs root or a grant; add them to "
                "[access.none] users or groups in a rule file")


def _toml_key(name: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_-]+", name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


_lock = threading.Lock()
_users: dict[int, tuple[float, str | None, frozenset[int]]] = {}
_groups: dict[str, tuple[float, int | None]] = {}


def clear_cache() -> None:
    """Forget cached user and group lookups (tests, or after editing /etc/group)."""
    with _lock:
        _users.clear()
        _groups.clear()


def _identity(uid: int) -> tuple[str | None, frozenset[int]]:
    """The user name and every gid (primary and supplementary) of ``uid``.

    An unknown uid has no name and no groups.
    """
    now = time.monotonic()
    with _lock:
        hit = _users.get(uid)
    if hit is not None and now - hit[0] < LOOKUP_TTL_S:
        return hit[1], hit[2]
    name: str | None = None
    gids: frozenset[int] = frozenset()
    if sys.platform == "win32":
        return name, gids
    try:
        pw = pwd.getpwuid(uid)
    except (KeyError, OverflowError, ValueError, TypeError):
        pass
    else:
        name = pw.pw_name
        try:
            gids = frozenset(os.getgrouplist(pw.pw_name, pw.pw_gid)) | {pw.pw_gid}
        except OSError:
            gids = frozenset({pw.pw_gid})
    with _lock:
        if len(_users) >= _CACHE_MAX:
            _users.clear()
        _users[uid] = (now, name, gids)
    return name, gids


def _group_gid(name: str) -> int | None:
    now = time.monotonic()
    with _lock:
        hit = _groups.get(name)
    if hit is not None and now - hit[0] < LOOKUP_TTL_S:
        return hit[1]
    if sys.platform == "win32":
        return None
    try:
        gid: int | None = grp.getgrnam(name).gr_gid
    except (KeyError, ValueError, UnicodeError):
        gid = None
    with _lock:
        if len(_groups) >= _CACHE_MAX:
            _groups.clear()
        _groups[name] = (now, gid)
    return gid
