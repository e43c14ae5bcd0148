"""cgroups for ainative on both layouts: v2 (unified) and v1/hybrid.

ainative owns one group per class, named ``<root_name>.<class>`` at the top of each
hierarchy it uses. The groups are flat on purpose: nested under one shared parent, a
class's weight would only count against its siblings, so a high-weight inference group
would be capped by the parent's default weight, and an idle background group would
inherit that parent's weight whenever inference sleeps.

It only ever moves processes it classified, and it remembers (through the engine's
journal) where each one came from so it can move it back. Those remembered paths come
back from a file on disk, so they are checked before use: a path that could climb out
of the hierarchy (``..``, NUL, anything resolving outside the mount) is refused.

A daemon that crashed leaves its groups as they were, cpu.idle=1 included, and the
kernel refuses a cpu.shares/cpu.weight write to an idle group (EINVAL). So cpu.idle is
written before the weight, and a leftover cpu.idle=1 that the class no longer asks for
is reset first.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass

from ainative.platform.base import ProcessGone
from ainative.platform.linux import procfs

# Features a class may ask for, and the controller (v2) / hierarchy (v1) giving each.
_V2_CONTROLLER = {"cpu_weight": "cpu", "cpu_idle": "cpu", "cpuset": "cpuset",
                  "memory_low": "memory"}
_V1_HIERARCHY = {"cpu_weight": "cpu", "cpu_idle": "cpu", "cpuset": "cpuset"}


@dataclass(frozen=True)
class CgroupSettings:
    """What a class asks of its group. None means 'leave the kernel default'."""

    # Relative CPU weight on the v2 scale (1..10000, default 100). On v1 it is mapped to
    # cpu.shares (2..262144, default 1024) as shares = weight * 1024 / 100, clamped: so 0
    # asks for the least either layout allows (cpu.weight=1, cpu.shares=2).
    cpu_weight: int | None = None
    # cpu.idle=1 (v2 and v1 since 5.15): the group gets SCHED_IDLE-like treatment.
    cpu_idle: bool | None = None
    cpuset_cpus: str | None = None  # "0-1", "3"
    memory_low: int | None = None  # bytes; v2 memory.low, v1 has no equivalent (reported)

    def features(self) -> list[str]:
        out = []
        if self.cpu_weight is not None:
            out.append("cpu_weight")
        if self.cpu_idle is not None:
            out.append("cpu_idle")
        if self.cpuset_cpus is not None:
            out.append("cpuset")
        if self.memory_low is not None:
            out.append("memory_low")
        return out


def group_path(root_name: str, group: str) -> str:
    """Where a class's group lives, relative to each hierarchy's mount."""
    return f"/{root_name}.{group}"


def weight_to_shares(weight: int) -> int:
    return max(2, min(262144, weight * 1024 // 100))


@dataclass(frozen=True)
class Hierarchy:
    key: str  # as the second field of /proc/PID/cgroup shows it ("0" for v2)
    mount: str
    controllers: frozenset[str]

    @property
    def is_v2(self) -> bool:
        return self.key == "0"


def _unescape(field: str) -> str:
    # /proc/self/mounts escapes spaces and friends as octal.
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")


def discover(mount_base: str = "/sys/fs/cgroup",
             mounts_file: str = "/proc/self/mounts") -> list[Hierarchy]:
    """Every cgroup hierarchy mounted under mount_base, one entry each."""
    found: dict[str, Hierarchy] = {}
    with open(mounts_file) as fh:
        lines = fh.read().splitlines()
    for line in lines:
        parts = line.split()
        if len(parts) < 4:
            continue
        mnt, fstype, opts = _unescape(parts[1]), parts[2], parts[3].split(",")
        if not (mnt == mount_base or mnt.startswith(mount_base.rstrip("/") + "/")):
            continue
        if fstype == "cgroup2":
            try:
                with open(os.path.join(mnt, "cgroup.controllers")) as cf:
                    ctrls = frozenset(cf.read().split())
            except OSError:
                ctrls = frozenset()
            found.setdefault("0", Hierarchy("0", mnt, ctrls))
        elif fstype == "cgroup":
            known = {"cpu", "cpuacct", "cpuset", "memory", "blkio", "io", "pids", "freezer",
                     "devices", "net_cls", "net_prio", "perf_event", "hugetlb", "rdma", "misc"}
            ctrls = frozenset(o for o in opts if o in known)
            named = [o for o in opts if o.startswith("name=")]
            if not ctrls and not named:
                continue
            # The key is spelled the way /proc/PID/cgroup spells it; read it from there.
            key = _v1_key(ctrls) if ctrls else named[0]
            found.setdefault(key, Hierarchy(key, mnt, ctrls))
    return list(found.values())


def _v1_key(ctrls: frozenset[str]) -> str:
    try:
        with open("/proc/self/cgroup") as fh:
            for line in fh:
                _hid, names, _path = line.rstrip("\n").split(":", 2)
                if names and frozenset(names.split(",")) == ctrls:
                    return names
    except OSError:
        pass
    return ",".join(sorted(ctrls))


def write_file(path: str, value: str) -> None:
    """Write a cgroup (or any kernel) file. os.write rather than a buffered file, so that
    the kernel's refusal surfaces here and not at some later flush."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def read_file(path: str) -> str:
    with open(path) as fh:
        return fh.read().strip()


def kernel_at_least(major: int, minor: int, release: str | None = None) -> bool:
    """Whether the running kernel (or ``release``, as uname -r spells it) is major.minor
    or newer; False when the release cannot be parsed."""
    m = re.match(r"(\d+)\.(\d+)", release if release is not None else os.uname().release)
    return m is not None and (int(m.group(1)), int(m.group(2))) >= (major, minor)


def check_rel_path(mount: str, rel: object) -> str:
    """The directory ``rel`` (a path as /proc/PID/cgroup shows it) names under ``mount``.
    Raises ValueError for anything that is not a plain path inside the hierarchy: the
    value may come from the journal, which is data, not code."""
    if not isinstance(rel, str):
        raise ValueError(f"cgroup path must be a string, not {type(rel).__name__}")
    if "\0" in rel:
        raise ValueError(f"cgroup path {rel!r} contains a NUL byte")
    if ".." in rel.split("/"):
        raise ValueError(f"cgroup path {rel!r} has a '..' component")
    d = os.path.join(mount, rel.lstrip("/"))
    real, base = os.path.realpath(d), os.path.realpath(mount)
    if real != base and not real.startswith(base.rstrip("/") + "/"):
        raise ValueError(f"cgroup path {rel!r} resolves outside {mount}")
    return d


class CgroupManager:
    """Creates and owns ``<mount>/<root_name>.<group>`` in every hierarchy it needs.

    ``mount_base`` is /sys/fs/cgroup on a real machine; tests pass the same but a unique
    ``root_name`` so they never touch anything else.
    """

    def __init__(self, root_name: str = "ainative", mount_base: str = "/sys/fs/cgroup") -> None:
        if not root_name or "/" in root_name or root_name.startswith("."):
            raise ValueError(f"bad cgroup root name {root_name!r}")
        self.root_name = root_name
        self.mount_base = mount_base
        self.hierarchies = discover(mount_base)
        if not self.hierarchies:
            raise OSError(errno.ENOENT, f"no cgroup filesystem mounted under {mount_base}")
        self._v2 = next((h for h in self.hierarchies if h.is_v2), None)
        self._v1 = {c: h for h in self.hierarchies if not h.is_v2 for c in h.controllers}

    @property
    def layout(self) -> str:
        """'v2', 'v1' or 'hybrid' (v1 controllers plus a v2 mount without them)."""
        if self._v2 is not None and not self._v1:
            return "v2"
        return "hybrid" if self._v2 is not None else "v1"

    def _where(self, feature: str) -> Hierarchy | None:
        ctrl = _V2_CONTROLLER.get(feature)
        if self._v2 is not None and ctrl in self._v2.controllers:
            return self._v2
        v1 = _V1_HIERARCHY.get(feature)
        if v1 is not None and v1 in self._v1:
            return self._v1[v1]
        return None

    def hierarchy_for(self, feature: str) -> Hierarchy | None:
        """The hierarchy a feature (cpu_weight, cpu_idle, cpuset, memory_low) is set in."""
        return self._where(feature)

    def managed(self) -> list[Hierarchy]:
        """The hierarchies ainative makes groups in (one per controller it uses)."""
        return self._managed()

    def _managed(self) -> list[Hierarchy]:
        seen: dict[str, Hierarchy] = {}
        for feature in _V2_CONTROLLER:
            h = self._where(feature)
            if h is not None:
                seen.setdefault(h.key, h)
        return list(seen.values())

    def capabilities(self) -> dict[str, str]:
        """Each feature (cpu_weight, cpu_idle, cpuset, memory_low, freeze) -> where it works
        ('v2', 'v1:cpu', ...) or why not ('unavailable: ...')."""
        out: dict[str, str] = {}
        for feature in ("cpu_weight", "cpu_idle", "cpuset", "memory_low"):
            h = self._where(feature)
            if h is None:
                if feature == "memory_low":
                    out[feature] = ("unavailable: memory.low needs the cgroup v2 memory "
                                    "controller (v1 has no equivalent)")
                else:
                    out[feature] = ("unavailable: no hierarchy has the "
                                    f"{_V2_CONTROLLER[feature]} controller")
                continue
            where = "v2" if h.is_v2 else f"v1:{h.key}"
            if feature == "cpu_idle" and not self._idle_supported(h):
                out[feature] = f"unavailable: no cpu.idle in {where} (kernel before 5.15)"
                continue
            out[feature] = where
        if self._v2 is not None:
            out["freeze"] = "v2"  # cgroup.freeze, in every non-root v2 group
        elif "freezer" in self._v1:
            out["freeze"] = "v1:freezer"
        else:
            out["freeze"] = "unavailable: no freezer"
        out["layout"] = self.layout
        return out

    def _idle_supported(self, h: Hierarchy) -> bool:
        # v1 shows cpu.idle in its root group. v2 shows it only in child groups, and only
        # once the cpu controller is enabled at the root's subtree_control, which nothing
        # may have done yet: a child group without cpu files says nothing about the
        # kernel. cpu.idle came with 5.15 on both layouts, so v2 asks the version.
        if os.path.exists(os.path.join(h.mount, "cpu.idle")):
            return True
        return h.is_v2 and "cpu" in h.controllers and kernel_at_least(5, 15)

    def group_dir(self, h: Hierarchy, group: str) -> str:
        return os.path.join(h.mount, group_path(self.root_name, group).lstrip("/"))

    def group_path(self, group: str) -> str:
        """The path /proc/PID/cgroup shows for a process in the group."""
        return group_path(self.root_name, group)

    def _enable_v2(self, h: Hierarchy, ctrl: str) -> None:
        sc = os.path.join(h.mount, "cgroup.subtree_control")
        if ctrl not in read_file(sc).split():
            write_file(sc, f"+{ctrl}")

    def ensure_group(self, group: str, settings: CgroupSettings) -> dict[str, str]:
        """Create (or update) the group; return {hierarchy-key: absolute dir} it exists in."""
        if not group or "/" in group or "\0" in group or group in (".", ".."):
            raise ValueError(f"bad group name {group!r}")
        made: dict[str, str] = {}
        cpu_done = False
        for feature in settings.features():
            h = self._where(feature)
            if h is None:
                continue
            d = self.group_dir(h, group)
            if h.is_v2:
                self._enable_v2(h, _V2_CONTROLLER[feature])
            if h.key not in made:
                os.makedirs(d, exist_ok=True)
                made[h.key] = d
            if feature in ("cpu_weight", "cpu_idle"):
                if not cpu_done:  # both live in the cpu controller; written together
                    self._apply_cpu(h, d, settings)
                    cpu_done = True
            else:
                self._apply(h, d, feature, settings)
        return made

    def _apply_cpu(self, h: Hierarchy, d: str, s: CgroupSettings) -> None:
        """cpu.idle and the weight, in the order the kernel accepts: it refuses a weight
        (EINVAL) while the group is idle, so idle is cleared before the weight is written
        and set after it. An idle group's weight does not count; it is written anyway
        (while still allowed) so that it holds once idle is cleared."""
        idle_path = os.path.join(d, "cpu.idle")
        has_idle = os.path.exists(idle_path)
        try:
            idle_now = has_idle and read_file(idle_path) == "1"
        except OSError:
            idle_now = False
        if s.cpu_weight is None:
            weight = None
        elif h.is_v2:
            weight = ("cpu.weight", str(max(1, min(10000, s.cpu_weight))))
        else:
            weight = ("cpu.shares", str(weight_to_shares(s.cpu_weight)))
        if s.cpu_idle:
            if weight is not None and not idle_now:
                write_file(os.path.join(d, weight[0]), weight[1])
            if has_idle and not idle_now:
                write_file(idle_path, "1")
            return
        # Not asked to be idle: cpu.idle=1 left by an earlier run (or a crash) goes first.
        if idle_now:
            write_file(idle_path, "0")
        if weight is not None:
            write_file(os.path.join(d, weight[0]), weight[1])

    def _apply(self, h: Hierarchy, d: str, feature: str, s: CgroupSettings) -> None:
        if feature == "cpuset" and s.cpuset_cpus is not None:
            if not h.is_v2:
                # A v1 cpuset group takes no tasks until both cpus and mems are set.
                mems = read_file(os.path.join(h.mount, "cpuset.mems"))
                write_file(os.path.join(d, "cpuset.mems"), mems)
            write_file(os.path.join(d, "cpuset.cpus"), s.cpuset_cpus)
        elif feature == "memory_low" and s.memory_low is not None:
            write_file(os.path.join(d, "memory.low"), str(s.memory_low))

    def current(self, pid: int) -> dict[str, str]:
        """{hierarchy-key: cgroup path relative to its mount} for the hierarchies we manage."""
        keys = {h.key for h in self._managed()}
        return {k: v for k, v in procfs.read_cgroup(pid).items() if k in keys}

    def root_paths(self) -> dict[str, str]:
        """{hierarchy-key: "/"} for the hierarchies we manage: where a process goes when
        nothing better is known."""
        return {h.key: "/" for h in self._managed()}

    def _by_key(self, key: str) -> Hierarchy | None:
        return next((h for h in self.hierarchies if h.key == key), None)

    def _move_into(self, pid: int, h: Hierarchy, rel: str) -> None:
        d = check_rel_path(h.mount, rel)
        if not os.path.isdir(d):
            d = h.mount  # the group is gone: the hierarchy's root is the safe place
        try:
            write_file(os.path.join(d, "cgroup.procs"), str(pid))
        except OSError as e:
            if e.errno == errno.ESRCH:
                raise ProcessGone(f"process {pid} has exited") from e
            raise

    def move(self, pid: int, group: str) -> dict[str, str]:
        """Move the whole process (all threads) into the group. Returns the paths it was in
        before (same shape as current()), for the journal."""
        before = self.current(pid)
        target = self.group_path(group)
        for h in self._managed():
            if os.path.isdir(self.group_dir(h, group)):
                self._move_into(pid, h, target)
        return before

    def move_back(self, pid: int, previous: dict[str, str]) -> None:
        """Move the process back where it was, hierarchy by hierarchy, skipping groups that
        no longer exist (then to the hierarchy root). Every path is checked before the
        first move, so a bad journal entry moves nothing (ValueError)."""
        moves = []
        for key, rel in previous.items():
            h = self._by_key(key)
            if h is not None:
                check_rel_path(h.mount, rel)
                moves.append((h, rel))
        for h, rel in moves:
            self._move_into(pid, h, rel)

    def members(self, group: str) -> set[int]:
        out: set[int] = set()
        for h in self._managed():
            try:
                text = read_file(os.path.join(self.group_dir(h, group), "cgroup.procs"))
            except OSError:
                continue
            out.update(int(p) for p in text.split())
        return out

    def owned_groups(self) -> list[str]:
        """Absolute dirs of every group this manager's root name owns, in all hierarchies."""
        prefix = f"{self.root_name}."
        out = []
        for h in self.hierarchies:
            try:
                out += [e.path for e in os.scandir(h.mount)
                        if e.is_dir(follow_symlinks=False) and e.name.startswith(prefix)]
            except OSError:
                continue
        return out

    def group_dirs(self, group: str) -> dict[str, str]:
        """{hierarchy-key: absolute dir} where the group exists now."""
        return {h.key: self.group_dir(h, group) for h in self._managed()
                if os.path.isdir(self.group_dir(h, group))}

    @staticmethod
    def _subtree(top: str) -> list[str]:
        """top and every group below it, deepest first (the order rmdir needs)."""
        out: list[str] = []
        for root, _dirs, _files in os.walk(top, topdown=False):
            out.append(root)
        return out or [top]

    def owned_members(self) -> dict[int, dict[str, str]]:
        """Every pid now inside one of the owned groups (or a group below one), in any
        hierarchy, with its current() paths. Processes that exit meanwhile are left out."""
        pids: set[int] = set()
        for top in self.owned_groups():
            for d in self._subtree(top):
                try:
                    text = read_file(os.path.join(d, "cgroup.procs"))
                except OSError:
                    continue
                pids.update(int(p) for p in text.split() if p.isdigit())
        out: dict[int, dict[str, str]] = {}
        for pid in sorted(pids):
            try:
                out[pid] = self.current(pid)
            except (ProcessGone, OSError):
                continue
        return out

    def _why_not_removed(self, d: str, e: OSError) -> str:
        if e.errno == errno.EBUSY:
            try:
                n = len(read_file(os.path.join(d, "cgroup.procs")).split())
            except OSError:
                n = 0
            if n:
                return f"still holds {n} process{'es' if n != 1 else ''}"
            return "busy (child groups, or tasks still leaving)"
        return e.strerror or str(e)

    def remove_all(self) -> dict[str, str]:
        """Remove every owned group that is empty of processes, in every hierarchy (after
        restore), groups below them first. Never raises: returns {dir: why} for each group
        it could not remove (a group still holding processes stays; rmdir refuses it)."""
        failed: dict[str, str] = {}
        for top in self.owned_groups():
            for d in self._subtree(top):
                try:
                    os.rmdir(d)
                except FileNotFoundError:
                    continue
                except OSError as e:
                    failed[d] = self._why_not_removed(d, e)
        return failed
