"""Multi-signal, explainable classification of one process.

Every signal is checked and reported (for `ainative explain` and `ainative plan`); the
class comes from the strongest signal that matched, in this order: explicit
registration, the opt-in environment variable, rules (later files first), then the
evidence of AI work: mapped AI runtime libraries or the GPU's compute-process list.

An AI runtime says "AI process", not "latency-critical": whether it serves requests
comes from a declaration (a registration, AINATIVE_CLASS, a rule naming a known server)
or from behaviour, chiefly a listening socket (TCP or Unix) of its own. An AI process
that listens gets the ``serving_class`` setting (``inference``); one that does not is
throughput work and gets ``library_class`` / ``gpu_process_class`` (``batch``: left at
its fair share). Whether a serving process is busy is the activity tracker's business
(core/activity.py), not this module's.

Registration and the environment variable are requests made by a process's owner, so
both go through the same access policy (``[access]`` in the rule files): a user may ask
only for what they could do to their own process, unless granted more. Rules, libraries
and the GPU list are the administrator's policy and need no grant. AINATIVE_CLASS=none
opts a process out (never touched), except out of a demotion the rules give it, which
needs a grant too (``[access.none]``); ``[[ignore]]`` tables are the administrator's
opt-outs and always win.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ainative.core.access import OPT_OUT
from ainative.core.rules import ProcessFacts, RuleSet
from ainative.core.signatures import in_use, match_libraries
from ainative.platform.backend import Backend
from ainative.platform.base import SCHED_FIFO, SCHED_RR, ProcessGone, ProcessInfo, TaskId

ENV_VAR = "AINATIVE_CLASS"
MAX_ENV_VALUE = 64  # a class name; anything longer is not one
# When to look again at a new process's mapped libraries (seconds after first sight):
# runtimes are loaded by import/dlopen some time after exec, and re-reading every
# process's maps on every pass would cost the daemon its idle budget.
LIBRARY_RECHECK = (0.05, 0.2, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0)
LIBRARY_RECHECK_STEADY = 120.0

# Listening sockets a runtime opens for itself, in every process that uses it, not for
# clients: the CUDA driver's abstract "@cuda-uvmfd-<pid>-<n>" (file-descriptor passing for
# unified memory; a plain torch process on the lent H100 machine listened on one and was
# taken for a server). Such a socket says nothing about serving.
RUNTIME_INTERNAL_SOCKETS = ("unix @cuda-uvmfd-",)


@dataclass
class Signal:
    name: str  # registration, env, rule, library, gpu, listen
    matched: bool
    detail: str
    cls: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"signal": self.name, "matched": self.matched, "detail": self.detail,
                "class": self.cls}


@dataclass
class Decision:
    ident: TaskId
    name: str
    cls: str | None
    signals: list[Signal] = field(default_factory=list)
    excluded: str | None = None  # why the process is never touched
    uid: int | None = None  # the process's owner (real uid)

    @property
    def matched_signals(self) -> list[Signal]:
        return [s for s in self.signals if s.matched]

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.ident.pid,
            "start_time": self.ident.start_time,
            "name": self.name,
            "class": self.cls,
            "uid": self.uid,
            "excluded": self.excluded,
            "signals": [s.to_json() for s in self.signals],
        }


@dataclass
class _LibCache:
    ident: TaskId  # the process these files belong to (a reused pid is another one)
    libs: dict[str, str]  # runtimes in use: {runtime: path}
    basenames: list[str]
    first_seen: float
    checked_at: float
    checks: int
    unused: dict[str, str] = field(default_factory=dict)  # mapped, not in use (bare cudart)


class Classifier:
    def __init__(
        self,
        backend: Backend,
        rules: RuleSet,
        *,
        self_pid: int | None = None,
        scope_pid: int | None = None,
        gpu_pids: Callable[[], set[int]] = set,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.rules = rules
        self.self_pid = os.getpid() if self_pid is None else self_pid
        self.scope_pid = scope_pid
        self.gpu_pids = gpu_pids
        self.clock = clock
        # identity -> (class, uid of whoever registered it): the grant is checked again
        # at every decision, so a reload that withdraws a grant withdraws the class.
        self.registrations: dict[TaskId, tuple[str, int]] = {}
        # Keyed by pid so an exit event purges in O(1); each entry names its identity so
        # a reused pid never inherits a stale answer.
        self._libs: dict[int, _LibCache] = {}

    # --- libraries, cached by identity so a PID reuse never inherits a stale answer ---

    def _cached(self, ident: TaskId) -> _LibCache | None:
        c = self._libs.get(ident.pid)
        return c if c is not None and c.ident == ident else None

    def libraries(self, ident: TaskId, force: bool = False) -> _LibCache:
        now = self.clock()
        c = self._cached(ident)
        if c is not None and not force and not self._due(c, now):
            return c
        paths = self.backend.mapped_files(ident.pid)
        if self.backend.task_id(ident.pid).start_time != ident.start_time:
            raise ProcessGone(ident.pid)
        found, unused = in_use(match_libraries(paths))
        bases = sorted({os.path.basename(p) for p in paths})
        if c is None:
            c = _LibCache(ident, found, bases, now, now, 1, unused)
            self._libs[ident.pid] = c
        else:
            c.libs, c.basenames, c.checked_at, c.checks = found, bases, now, c.checks + 1
            c.unused = unused
        return c

    @staticmethod
    def _due_at(c: _LibCache) -> float | None:
        """When the next look at the mapped files is due; None once a runtime was found
        (a runtime once mapped stays the answer for this identity)."""
        if c.libs:
            return None
        age = c.checked_at - c.first_seen
        nxt = next((t for t in LIBRARY_RECHECK if t > age + 1e-9), None)
        return c.first_seen + nxt if nxt is not None else c.checked_at + LIBRARY_RECHECK_STEADY

    def _due(self, c: _LibCache, now: float) -> bool:
        due_at = self._due_at(c)
        return due_at is not None and now >= due_at

    def library_recheck_due(self, ident: TaskId) -> bool:
        c = self._cached(ident)
        return c is None or self._due(c, self.clock())

    def next_library_check(self, ident: TaskId) -> float | None:
        """Clock time of the next recheck for a process looked at before; None when none
        is coming (never looked at, or a runtime is already mapped)."""
        c = self._cached(ident)
        return None if c is None else self._due_at(c)

    def forget(self, ident: TaskId) -> None:
        if self._cached(ident) is not None:
            del self._libs[ident.pid]
        self.registrations.pop(ident, None)

    def forget_pid(self, pid: int) -> None:
        """Drop cached libraries of a pid (after exec; registrations stay)."""
        self._libs.pop(pid, None)

    def forget_exited(self, pid: int) -> None:
        """Purge every table entry of an exited pid (its exit event), whatever its start
        time: an exec storm must not grow the tables until the next full scan."""
        self._libs.pop(pid, None)
        if self.registrations:  # a handful at most; empty on most machines
            for ident in [i for i in self.registrations if i.pid == pid]:
                del self.registrations[ident]

    def forget_gone(self, alive: set[TaskId]) -> None:
        for pid in [p for p, c in self._libs.items() if c.ident not in alive]:
            del self._libs[pid]
        for ident in [i for i in self.registrations if i not in alive]:
            del self.registrations[ident]

    # --- the decision ---

    def exclusion(self, info: ProcessInfo, managed: bool) -> str | None:
        if info.pid == 1:
            return "PID 1 (init) is never touched"
        if info.is_kernel_thread:
            return "kernel thread"
        if info.pid == self.self_pid:
            return "the ainative daemon itself"
        if self.scope_pid is not None:
            # Descendants only: the scope's root is whoever runs the daemon (a test
            # runner, a stress leader), never a workload of its own.
            if info.pid == self.scope_pid:
                return f"the scope's root (PID {self.scope_pid}); only its descendants are managed"
            if not self.backend.is_descendant(info.pid, self.scope_pid):
                return f"outside the daemon's scope (not a descendant of PID {self.scope_pid})"
        if info.policy in (SCHED_FIFO, SCHED_RR) and not managed:
            return "someone else gave it a realtime policy; ainative leaves realtime tasks alone"
        return None

    def classify(self, info: ProcessInfo, *, managed: bool = False,
                 libraries: bool = True) -> Decision:
        """Decide the class of one process. Mapped files are re-read only when the
        backoff says a recheck is due; ``libraries=False`` never re-reads a cached answer
        (the cheap path taken on every event)."""
        d = Decision(info.ident, info.comm, None, uid=info.uid)
        d.excluded = self.exclusion(info, managed)
        if d.excluded:
            return d

        lib_cache: _LibCache | None = None

        def lib_basenames() -> list[str]:
            nonlocal lib_cache
            if lib_cache is None:
                lib_cache = self._lib_cache_for(info.ident, libraries)
            return lib_cache.basenames if lib_cache else []

        def runtimes() -> list[str]:
            lib_basenames()
            return sorted(lib_cache.libs) if lib_cache else []

        facts = ProcessFacts(
            comm=info.comm,
            exe=info.exe,
            cmdline=" ".join(info.cmdline),
            user=info.user,
            uid=info.uid,
            cgroup=info.cgroup_path,
            parent_comm=(self._parent_comm(info.ppid)
                         if self.rules.uses_parent else None),
            libraries=lib_basenames,
            runtimes=runtimes,
        )
        ignored = self.rules.first_ignore(facts)
        if ignored:
            rule, why = ignored
            d.excluded = f"ignored by {rule.name!r} ({rule.source}): {', '.join(why)}"
            return d

        reg = self.registrations.get(info.ident)
        if reg is None:
            d.signals.append(Signal("registration", False, "not registered"))
        else:
            reg_cls, reg_uid = reg
            refused = self.refusal(reg_cls, reg_uid)
            d.signals.append(Signal(
                "registration", refused is None,
                f"registered through the socket as {reg_cls} by uid {reg_uid}"
                + (f"; refused: {refused}" if refused else ""),
                reg_cls if refused is None else None))

        env_cls: str | None = None
        try:
            env_cls = self.backend.environ_value(info.pid, ENV_VAR)
        except PermissionError:
            d.signals.append(Signal("env", False, f"{ENV_VAR}: environment not readable"))
        else:
            if env_cls is None:
                d.signals.append(Signal("env", False, f"{ENV_VAR} unset"))
            elif env_cls == OPT_OUT:
                pass  # decided below, once it is known what the process is opting out of
            elif len(env_cls) > MAX_ENV_VALUE or env_cls not in self.rules.classes:
                d.signals.append(Signal("env", False, f"{ENV_VAR} is set to something that "
                                        "is not a known class", None))
            else:
                refused = self.refusal(env_cls, info.uid)
                d.signals.append(Signal(
                    "env", refused is None,
                    f"{ENV_VAR}={env_cls}" + (f"; refused: {refused}" if refused else ""),
                    env_cls if refused is None else None))

        hit = self.rules.first_match(facts)
        if hit:
            rule, why = hit
            d.signals.append(Signal("rule", True,
                                    f"rule {rule.name!r} ({rule.source}): {', '.join(why)}",
                                    rule.cls))
        else:
            n = len(self.rules.rules)
            d.signals.append(Signal("rule", False, f"none of {n} rules matched"))

        lib_basenames()
        if lib_cache is None:
            d.signals.append(Signal("library", False, "mapped files not readable"))
        elif lib_cache.libs:
            found = ", ".join(f"{k} ({os.path.basename(v)})" for k, v in lib_cache.libs.items())
            d.signals.append(Signal("library", True, f"maps {found}", self.rules.library_class))
        elif lib_cache.unused:
            found = ", ".join(os.path.basename(v) for v in lib_cache.unused.values())
            d.signals.append(Signal("library", False, f"maps {found} but not the CUDA driver: "
                                    "CUDA is not in use"))
        else:
            d.signals.append(Signal("library", False,
                                    f"no AI runtime among {len(lib_cache.basenames)} mapped files"))

        try:
            gpu = self.gpu_pids()
        except Exception as e:  # NVML failures must never stop classification
            d.signals.append(Signal("gpu", False, f"GPU process list unavailable: {e}"))
        else:
            on_gpu = info.pid in gpu
            d.signals.append(Signal("gpu", on_gpu,
                                    "in the GPU's compute-process list" if on_gpu
                                    else "not a GPU compute process",
                                    self.rules.gpu_process_class if on_gpu else None))

        declared = next((s for s in d.signals
                         if s.matched and s.cls and s.name in ("registration", "env", "rule")),
                        None)
        ai = next((s for s in d.signals if s.matched and s.name in ("library", "gpu")), None)
        if declared is not None:
            d.cls = declared.cls
            d.signals.append(Signal("listen", False, f"not needed: {declared.name} decides"))
        elif ai is not None:
            listen = self._listen_signal(info.pid)
            d.signals.append(listen)
            d.cls = listen.cls if listen.matched else ai.cls
        else:
            d.signals.append(Signal("listen", False, "not needed: no AI runtime"))

        if env_cls == OPT_OUT:
            self._opt_out(d, info.uid)
        return d

    def _listen_signal(self, pid: int) -> Signal:
        """Serving evidence of an AI process: the sockets it listens on (not the ones a
        runtime opens for itself in every process)."""
        try:
            socks = self.backend.listening_sockets(pid)
        except PermissionError:
            return Signal("listen", False, "sockets not readable")
        except OSError as e:
            return Signal("listen", False, f"sockets not readable: {e}")
        internal = [s for s in socks if s.startswith(RUNTIME_INTERNAL_SOCKETS)]
        socks = [s for s in socks if not s.startswith(RUNTIME_INTERNAL_SOCKETS)]
        if not socks and internal:
            return Signal("listen", False, f"only a runtime's own socket ({internal[0]}): "
                                           "throughput work, not serving")
        if not socks:
            return Signal("listen", False, "no listening socket: throughput work, not serving")
        shown = ", ".join(socks[:4]) + (f" and {len(socks) - 4} more" if len(socks) > 4 else "")
        return Signal("listen", True, f"listens on {shown}", self.rules.serving_class)

    def _opt_out(self, d: Decision, uid: int) -> None:
        """AINATIVE_CLASS=none: never touched, unless it would opt out of a demotion the
        rules give it and its owner has no grant for that."""
        policy = self.rules.classes.get(d.cls) if d.cls else None
        refused = self.rules.access.check_opt_out(policy, uid) if policy else None
        if refused:
            d.signals.insert(1, Signal("env", False, f"{ENV_VAR}={OPT_OUT}; refused: {refused}"))
            return
        d.signals.insert(1, Signal("env", True, f"{ENV_VAR}={OPT_OUT}: opted out"))
        d.cls = None
        d.excluded = f"opted out by its owner ({ENV_VAR}={OPT_OUT})"


    def refusal(self, cls: str, uid: int) -> str | None:
        """Why uid may not ask for cls (None when it may): the access policy's answer."""
        policy = self.rules.classes.get(cls)
        if policy is None:
            return f"class {cls!r} is not defined"
        return self.rules.access.check(policy, uid)

    def _lib_cache_for(self, ident: TaskId, refresh: bool) -> _LibCache | None:
        try:
            if refresh:
                return self.libraries(ident)
            c = self._cached(ident)
            return c if c is not None else self.libraries(ident)
        except PermissionError:
            return None

    def _parent_comm(self, ppid: int) -> str | None:
        if ppid <= 0:
            return None
        try:
            return self.backend.process_name(ppid)
        except (ProcessGone, PermissionError, OSError):
            return None
