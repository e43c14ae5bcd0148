"""Boot a stock Debian 12 kernel (6.1) in a throw-away VM and run a command in it.

Why a VM: this machine's cgroups are hybrid (v2 without cpu/io/memory) and its kernel is
6.18, while most hosts ainative is installed on are pure cgroup v2 on an older distribution
kernel. The kernel-facing tests must see that kernel for real.

Why virtme-ng (``vng``) rather than a disk image for these runs: it boots the kernel with a
read-only snapshot of this host's own filesystem (writes go to a tmpfs overlay), so the
checkout and its ``.venv`` (numpy, onnxruntime) work inside unchanged, with no image to
build, at about 15 s per round trip. Its init is not systemd, which is what we want here:
the cgroup tree is exactly the kernel's, with nothing enabled in the root's
subtree_control until ainative asks. The service tests, which need systemd as PID 1, boot a
debootstrapped image instead (``systemd_image.py``).

There is no hardware virtualisation on this machine or on CI's runners (``/dev/kvm`` is
nested without vmx/svm): qemu runs under TCG, ``-cpu max`` so numpy and onnxruntime find
AVX2. Everything inside is 10-16x slower than on the host: run only kernel-facing tests
there, and never trust a timing taken inside.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]
VENV_BIN = CHECKOUT / ".venv" / "bin"

# Modules whose probing is slow under TCG and that nothing in the guest needs.
_BLACKLIST = ("kvm,kvm_intel,kvm_amd,ahci,libahci,sr_mod,cdrom,psmouse,evdev,i2c_piix4,"
              "i2c_smbus,serio_raw,pcspkr,floppy,joydev,bochs,drm,drm_kms_helper")


@dataclass(frozen=True)
class VmResult:
    rc: int
    output: str
    seconds: float


def find_kernel() -> str | None:
    """Debian 12's own kernel (linux-image-amd64, 6.1) in /boot, the newest if several;
    None when it is not installed (scripts/bootstrap installs it as root)."""
    found = sorted(glob.glob("/boot/vmlinuz-6.1.*-amd64"))
    return found[-1] if found else None


def why_no_vm() -> str | None:
    """None when a VM can be booted here; else one line saying what is missing and how to
    get it (for a skip)."""
    if os.environ.get("AINATIVE_SKIP_VM") == "1":
        return "AINATIVE_SKIP_VM=1 (a quick local run; CI runs them)"
    if os.uname().machine != "x86_64":
        return f"the VM tests boot an amd64 kernel; this machine is {os.uname().machine}"
    if os.geteuid() != 0:
        return "the VM tests run as root (the guest runs the host's user, and the tests " \
               "inside write cgroups): run them with sudo"
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 not found: apt-get install qemu-system-x86 (scripts/bootstrap)"
    if not (VENV_BIN / "vng").exists():
        return f"virtme-ng not installed in {VENV_BIN}: pip install -e '.[dev]' (scripts/bootstrap)"
    if not os.path.exists("/bin/busybox") and not os.path.exists("/usr/bin/busybox"):
        return "busybox not found (virtme-ng's initramfs needs it): apt-get install busybox-static"
    if find_kernel() is None:
        return ("no Debian 6.1 kernel in /boot: apt-get install linux-image-amd64 "
                "(scripts/bootstrap)")
    if not os.access(find_kernel() or "", os.R_OK):
        return f"{find_kernel()} is not readable"
    return None


def run_in_vm(command: str, *, timeout: float, rwdirs: tuple[str, ...] = (),
              cpus: int = 2, memory: str = "2G") -> VmResult:
    """Boot the kernel, run ``command`` (sh) as root in the checkout, return its exit
    status and output. ``rwdirs``: host folders the guest may write (results come back
    through them); everything else the guest writes goes to a tmpfs and is gone after.
    A VM that outlives ``timeout`` is killed: rc 124."""
    kernel = find_kernel()
    if kernel is None:
        raise RuntimeError(why_no_vm() or "no kernel")
    argv = [str(VENV_BIN / "vng"), "--run", kernel, "--disable-kvm",
            f"--cpus={cpus}", f"--memory={memory}", "--qemu-opts=-cpu max",
            f"--append=module_blacklist={_BLACKLIST}", f"--cwd={CHECKOUT}"]
    argv += [f"--rwdir={d}" for d in rwdirs]
    argv += ["--exec", command]
    env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    t0 = time.monotonic()
    # vng reopens /proc/self/fd/1: give it a pipe (capture), never a terminal; stdin from
    # /dev/null or it waits for a console.
    # Its own session, so that a timeout ends vng and the qemu it started, nothing else.
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        rc = 124
    except BaseException:
        # Interrupted (pytest-timeout, ^C): never leave a qemu behind on both CPUs.
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        raise
    return VmResult(rc, out.decode(errors="replace"), time.monotonic() - t0)


# --- the systemd image (tests/vm/build-systemd-image makes it) ---

IMAGE = CHECKOUT / ".vm-cache" / "bookworm-systemd.img"


def find_initrd() -> str | None:
    kernel = find_kernel()
    if kernel is None:
        return None
    initrd = kernel.replace("/vmlinuz-", "/initrd.img-")
    return initrd if os.path.exists(initrd) else None


def why_no_systemd_vm() -> str | None:
    """None when the systemd image can be built and booted here; else why not."""
    if (os.uname().machine != "x86_64" or os.geteuid() != 0
            or os.environ.get("AINATIVE_SKIP_VM") == "1"):
        return why_no_vm() or "needs root on amd64"
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 not found: apt-get install qemu-system-x86 (scripts/bootstrap)"
    if find_kernel() is None or find_initrd() is None:
        return ("no Debian 6.1 kernel and initrd in /boot: apt-get install linux-image-amd64 "
                "(scripts/bootstrap)")
    if not IMAGE.exists() and shutil.which("debootstrap") is None:
        return "debootstrap not found (it builds the image): apt-get install debootstrap"
    return None


def run_systemd_vm(*, ctl: str, dist: str, out: str, timeout: float,
                   cpus: int = 2, memory: str = "2G") -> VmResult:
    """Boot the image with systemd as PID 1; its vmtest.service runs ``ctl``/run, writes
    the exit status to ``out``/rc and powers off. The image is opened with -snapshot:
    whatever the guest writes is thrown away, so every run starts from the same machine.
    ``dist`` is shared read-only at /mnt/dist, ``out`` read-write at /mnt/out."""
    kernel, initrd = find_kernel(), find_initrd()
    if kernel is None or initrd is None:
        raise RuntimeError(why_no_systemd_vm() or "no kernel")
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-smp", str(cpus),
            "-m", memory, "-nographic", "-no-reboot", "-nic", "none", "-snapshot",
            "-kernel", kernel, "-initrd", initrd,
            "-append", f"root=/dev/vda rw console=ttyS0 quiet panic=-1 "
                       f"module_blacklist={_BLACKLIST}",
            "-drive", f"file={IMAGE},if=virtio,format=raw",
            "-virtfs", f"local,path={ctl},mount_tag=ctl,security_model=none,readonly=on",
            "-virtfs", f"local,path={dist},mount_tag=dist,security_model=none,readonly=on",
            "-virtfs", f"local,path={out},mount_tag=out,security_model=none"]
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, start_new_session=True)
    try:
        console, _ = p.communicate(timeout=timeout)
        rc_file = Path(out, "rc")
        rc = int(rc_file.read_text().strip() or 1) if rc_file.exists() else 125
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        console, _ = p.communicate()
        rc = 124
    except BaseException:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        raise
    return VmResult(rc, console.decode(errors="replace"), time.monotonic() - t0)
