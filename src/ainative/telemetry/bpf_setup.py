"""What bcc needs before an eBPF program can run here, checked and (on request) prepared.

bcc compiles its C at run time with clang against kernel headers, reads the tracepoints'
field layouts from tracefs, and needs privileges to load programs. Each of these can be
missing on an ordinary machine, and each has a one-line fix; this module finds which one
is missing (``check_*`` return ``""`` or the reason with its fix) and, where asked
(``prepare``, ``python -m ainative.telemetry.bpf_setup``), applies the fixes that are safe
to apply: mount tracefs, link the installed headers for the running kernel. Nothing here is
done implicitly by the daemon: a source that finds something missing falls back and says
why.

Two facts of Debian hosts shape it:

* Debian's bcc (``python3-bpfcc``) is installed for the system Python, in
  ``/usr/lib/python3/dist-packages``. A virtual environment does not see that directory,
  and putting all of dist-packages on its path would mix Debian's packages into it.
  :func:`import_bcc` therefore loads just the ``bcc`` package from there (it is pure
  Python over libbcc.so and imports nothing but the standard library).
* A kernel newer than the distribution's (a cloud or VM kernel) has no headers package.
  Programs that only use tracepoint arguments (``TRACEPOINT_PROBE``, whose layout bcc reads
  from tracefs) compile correctly against the distribution's headers, so
  :func:`link_headers` points ``/lib/modules/$(uname -r)/{build,source}`` at the newest
  installed ones. Programs that read ``struct task_struct`` would not be safe that way and
  none of ainative's do.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

__all__ = [
    "DEBIAN_BCC",
    "BpfSetupError",
    "check_bcc",
    "check_headers",
    "check_privileges",
    "check_tracefs",
    "import_bcc",
    "link_headers",
    "mount_tracefs",
    "prepare",
    "tracefs_dir",
]

DEBIAN_BCC = Path("/usr/lib/python3/dist-packages/bcc")
TRACEFS_DIRS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
MODULES = Path("/lib/modules")
HEADERS_PACKAGE = "linux-headers-amd64"  # Debian's meta-package for this architecture

CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39

_FIX_HINT = "python -m ainative.telemetry.bpf_setup"


class BpfSetupError(RuntimeError):
    """Something bcc needs is missing: one line saying what, and how to fix it."""


# --- bcc ---


def import_bcc() -> ModuleType:
    """The ``bcc`` module: the one on sys.path, else Debian's loaded by itself.

    Raises BpfSetupError with the fix when neither is there."""
    if "bcc" in sys.modules:
        return sys.modules["bcc"]
    try:
        return importlib.import_module("bcc")
    except ImportError:
        pass
    init = DEBIAN_BCC / "__init__.py"
    if not init.is_file():
        raise BpfSetupError("bcc is not installed: apt-get install python3-bpfcc")
    spec = importlib.util.spec_from_file_location(
        "bcc", init, submodule_search_locations=[str(DEBIAN_BCC)])
    if spec is None or spec.loader is None:
        raise BpfSetupError(f"cannot load bcc from {DEBIAN_BCC}: reinstall python3-bpfcc")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bcc"] = mod
    try:
        spec.loader.exec_module(mod)
    except Exception as e:  # libbcc missing or broken: bcc raises plain Exceptions
        del sys.modules["bcc"]
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BpfSetupError(f"bcc does not load ({first[:100]}): "
                            "apt-get install --reinstall python3-bpfcc libbpfcc") from None
    return mod


def check_bcc(load: bool = True) -> str:
    """"" when bcc is usable, else why. ``load=False`` only looks for the package and
    libbcc without importing them: loading bcc maps libbcc and LLVM (about 60 MB of RSS
    that stays), which a status probe must not cost the daemon."""
    if not load:
        if "bcc" in sys.modules or importlib.util.find_spec("bcc") is not None:
            return ""
        if not (DEBIAN_BCC / "__init__.py").is_file():
            return "bcc is not installed: apt-get install python3-bpfcc"
        libdirs = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib",
                   "/usr/lib64")
        if not any(Path(d).glob("libbcc.so*") for d in libdirs if Path(d).is_dir()):
            return "libbcc is missing: apt-get install --reinstall python3-bpfcc libbpfcc"
        return ""
    try:
        import_bcc()
    except BpfSetupError as e:
        return str(e)
    return ""


def first_problem(load_bcc: bool = True) -> str:
    """"" when privilege, tracefs, bcc and headers are all there, else the first missing
    one with its fix. ``load_bcc=False`` does not import bcc (see check_bcc): for a
    status probe."""
    for why in (check_privileges, check_tracefs, lambda: check_bcc(load=load_bcc),
                check_headers):
        reason = why()
        if reason:
            return reason
    return ""


# --- privileges ---


def _cap_eff() -> int:
    # This process's own effective set (as mem/limits.py reads it): no /proc/PID parsing.
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return int(line.split(":", 1)[1].strip(), 16)
    except (OSError, ValueError):
        pass
    return 0


def privileges_reason(euid: int, cap_eff: int) -> str:
    """Pure: "" when these privileges can load and attach tracepoint programs."""
    has = (cap_eff >> CAP_SYS_ADMIN & 1) or (cap_eff >> CAP_BPF & 1 and cap_eff >> CAP_PERFMON & 1)
    if has:
        return ""
    who = "root without CAP_SYS_ADMIN" if euid == 0 else f"uid {euid}"
    return (f"loading eBPF programs needs root or CAP_BPF and CAP_PERFMON, and this runs as "
            f"{who}: run the daemon as root")


def check_privileges() -> str:
    return privileges_reason(os.geteuid(), _cap_eff())


# --- tracefs ---


def tracefs_dir() -> Path | None:
    """The mounted tracefs (either place bcc looks), or None."""
    for d in TRACEFS_DIRS:
        if (d / "events" / "sched" / "sched_switch" / "format").is_file():
            return d
    return None


def check_tracefs() -> str:
    if tracefs_dir() is not None:
        return ""
    if any((d / "events").is_dir() for d in TRACEFS_DIRS):
        return ("tracefs has no sched tracepoints (the kernel lacks CONFIG_TRACEPOINTS "
                "or sched events): the eBPF source needs sched:sched_switch")
    return "tracefs is not mounted: mount -t tracefs nodev /sys/kernel/tracing"


def mount_tracefs() -> list[str]:
    """Mount tracefs at /sys/kernel/tracing if it is not. Returns what was done."""
    if tracefs_dir() is not None:
        return []
    r = subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS_DIRS[0])],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        why = (r.stderr.strip().splitlines() or ["mount failed"])[-1]
        raise BpfSetupError(f"cannot mount tracefs at {TRACEFS_DIRS[0]}: {why[:120]}")
    return [f"mounted tracefs at {TRACEFS_DIRS[0]}"]


# --- kernel headers ---


def _version_key(name: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", name)]


def installed_headers(release: str | None = None) -> tuple[Path, Path] | None:
    """(build, source) of the newest kernel headers the distribution installed for another
    release (Debian links /lib/modules/VERSION/{build,source} to them), or None."""
    release = release or os.uname().release
    found: list[tuple[list[int], Path, Path]] = []
    try:
        entries = list(MODULES.iterdir())
    except OSError:
        return None
    for d in entries:
        if d.name == release:
            continue
        build = d / "build"
        if (build / "include").is_dir():
            src = d / "source"
            found.append((_version_key(d.name), build.resolve(),
                          src.resolve() if src.is_dir() else build.resolve()))
    if not found:
        return None
    found.sort(key=lambda t: t[0])
    return found[-1][1], found[-1][2]


def check_headers(release: str | None = None) -> str:
    release = release or os.uname().release
    if (MODULES / release / "build" / "include").is_dir():
        return ""
    if installed_headers(release) is not None:
        return (f"no kernel headers linked for {release}: link /lib/modules/{release}/build "
                f"and source to the installed ones ({_FIX_HINT} does it)")
    return (f"no kernel headers for {release}: apt-get install {HEADERS_PACKAGE}, then "
            f"run {_FIX_HINT} to link them")


def link_headers(release: str | None = None) -> list[str]:
    """Link /lib/modules/RELEASE/{build,source} to the newest installed headers when the
    running kernel has none. Returns what was done; raises BpfSetupError when no headers
    are installed at all."""
    release = release or os.uname().release
    target = MODULES / release
    if (target / "build" / "include").is_dir():
        return []
    pair = installed_headers(release)
    if pair is None:
        raise BpfSetupError(f"no kernel headers installed: apt-get install {HEADERS_PACKAGE}")
    done = []
    target.mkdir(parents=True, exist_ok=True)
    for name, dest in zip(("build", "source"), pair, strict=True):
        link = target / name
        if link.is_symlink() or link.exists():
            if link.is_symlink() and not link.exists():  # dangling: replace it
                link.unlink()
            else:
                continue
        link.symlink_to(dest)
        done.append(f"linked {link} -> {dest}")
    return done


# --- all of it ---


def prepare(*, mount: bool = True, headers: bool = True) -> list[str]:
    """Apply the safe fixes (mount tracefs, link headers) and return what was done; raise
    BpfSetupError (one line) for what cannot be fixed here (bcc missing, no privileges,
    no headers package)."""
    done: list[str] = []
    why = check_privileges()
    if why:
        raise BpfSetupError(why)
    if mount:
        done += mount_tracefs()
    if headers:
        done += link_headers()
    why = check_bcc()
    if why:
        raise BpfSetupError(why)
    return done


def main(argv: list[str] | None = None) -> int:
    """``python -m ainative.telemetry.bpf_setup``: prepare this host for the eBPF sources."""
    del argv
    try:
        done = prepare()
    except (BpfSetupError, OSError) as e:
        print(f"ainative bpf setup: {e}", file=sys.stderr)
        return 1
    for line in done or ["nothing to do: tracefs, kernel headers and bcc are ready"]:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
