"""The Win32 boundary: every Windows API call the Windows backend and pool make, in one
class, through ctypes.

Why one class: the backend's logic (what to journal, how to read a value back, what a
refused call means) is tested on Linux against an in-memory stand-in for this class
(tests/winhost/test_windows_fake_boundary.py), because the paths that need a real Windows (a
non-administrator's REALTIME being downgraded to HIGH, the working-set quota refusing a
VirtualLock) cannot be reproduced under Wine, which runs everything as Administrator.
Under Wine the real class is exercised by tests/windows.

Why ctypes and not psutil for these: psutil has no thread priority, no thread affinity,
no working-set size and no VirtualLock, and under Wine 8 its name()/exe() raise, while
QueryFullProcessImageNameW works (WINDOWS.md).

Importable on any platform; only ``Kernel32()`` needs Windows.
"""

from __future__ import annotations

import ctypes
import errno
import sys
from typing import Any, Protocol

from ainative.platform.base import ProcessGone

# Access rights (winnt.h).
PROCESS_SET_INFORMATION = 0x0200
PROCESS_QUERY_INFORMATION = 0x0400
PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
PROCESS_SET_QUOTA = 0x0100
SYNCHRONIZE = 0x00100000
THREAD_SET_INFORMATION = 0x0020
THREAD_QUERY_INFORMATION = 0x0040
THREAD_QUERY_LIMITED_INFORMATION = 0x0800
TOKEN_QUERY = 0x0008
TOKEN_ELEVATION = 20  # TOKEN_INFORMATION_CLASS TokenElevation
TOKEN_USER = 1  # TOKEN_INFORMATION_CLASS TokenUser
SDDL_REVISION_1 = 1
SE_KERNEL_OBJECT = 6
DACL_SECURITY_INFORMATION = 0x4

# Priority classes (SetPriorityClass).
PRIORITY_CLASS_VALUES = {
    "idle": 0x40, "below_normal": 0x4000, "normal": 0x20, "above_normal": 0x8000,
    "high": 0x80, "realtime": 0x100,
}
PRIORITY_CLASS_NAMES = {v: k for k, v in PRIORITY_CLASS_VALUES.items()}

# Win32 error codes the backend and pool tell apart.
ERROR_ACCESS_DENIED = 5
ERROR_INVALID_HANDLE = 6
ERROR_NOT_ENOUGH_MEMORY = 8
ERROR_INVALID_PARAMETER = 87
ERROR_NOT_LOCKED = 158
ERROR_PRIVILEGE_NOT_HELD = 1314
ERROR_WORKING_SET_QUOTA = 1453
THREAD_PRIORITY_ERROR_RETURN = 0x7FFFFFFF
WAIT_OBJECT_0, WAIT_TIMEOUT = 0, 0x102

MEM_COMMIT, MEM_RESERVE, MEM_RELEASE = 0x1000, 0x2000, 0x8000
PAGE_READWRITE = 0x04
QUOTA_LIMITS_HARDWS_MIN_DISABLE = 0x2
QUOTA_LIMITS_HARDWS_MAX_DISABLE = 0x8


class Win32Error(OSError):
    """A Win32 call failed: ``code`` is GetLastError()'s value, the message names the
    call."""

    def __init__(self, code: int, what: str) -> None:
        super().__init__(errno.EIO, f"{what}: Win32 error {code}")
        self.code = code


class Win32AccessDenied(PermissionError):
    """ERROR_ACCESS_DENIED (5), or a privilege not held (1314)."""

    def __init__(self, code: int, what: str) -> None:
        super().__init__(errno.EACCES, f"{what}: access denied (Win32 error {code})")
        self.code = code


def error(code: int, what: str) -> Exception:
    """The exception the core understands for a failed call: PermissionError for access
    denied, ProcessGone for a process or thread that no longer exists (OpenProcess and
    OpenThread answer ERROR_INVALID_PARAMETER for an unknown id), Win32Error otherwise."""
    if code in (ERROR_ACCESS_DENIED, ERROR_PRIVILEGE_NOT_HELD):
        return Win32AccessDenied(code, what)
    if code == ERROR_INVALID_PARAMETER and what.startswith("Open"):
        return ProcessGone(f"{what}: no such process or thread")
    return Win32Error(code, what)


class Win32(Protocol):
    """What the backend and the pool need from Windows; ``Kernel32`` is the real one."""

    def get_priority_class(self, pid: int) -> int: ...
    def set_priority_class(self, pid: int, value: int) -> None: ...
    def get_thread_priority(self, tid: int) -> int: ...
    def set_thread_priority(self, tid: int, value: int) -> None: ...
    def get_thread_affinity(self, tid: int) -> int: ...
    def set_thread_affinity(self, tid: int, mask: int) -> None: ...
    def process_affinity(self, pid: int) -> tuple[int, int]: ...
    def process_creation_time(self, pid: int) -> int: ...
    def thread_creation_time(self, tid: int) -> int: ...
    def thread_process_id(self, tid: int) -> int: ...
    def image_path(self, pid: int) -> str: ...
    def open_waitable(self, pid: int) -> int: ...
    def has_exited(self, handle: int) -> bool: ...
    def close(self, handle: int) -> None: ...
    def is_admin(self) -> bool: ...
    def pipe_client_pid(self, pipe_handle: int) -> int: ...
    def process_elevated(self, pid: int) -> bool: ...
    def get_working_set(self) -> tuple[int, int]: ...
    def set_working_set(self, minimum: int, maximum: int) -> None: ...
    def virtual_alloc(self, size: int) -> int: ...
    def virtual_free(self, address: int) -> None: ...
    def virtual_lock(self, address: int, size: int) -> None: ...
    def virtual_unlock(self, address: int, size: int) -> None: ...


class _SECURITY_ATTRIBUTES(ctypes.Structure):
    _fields_ = [("length", ctypes.c_uint32), ("descriptor", ctypes.c_void_p),
                ("inherit", ctypes.c_int)]


class SecurityAttributes:
    """A SECURITY_ATTRIBUTES built from SDDL, alive until ``free()``: ``address`` is what
    CreateNamedPipe's last argument takes (the descriptor is LocalAlloc'd by Windows)."""

    def __init__(self, struct: _SECURITY_ATTRIBUTES, free: Any) -> None:
        self._struct = struct
        self._free = free

    @property
    def address(self) -> int:
        return ctypes.addressof(self._struct)

    def free(self) -> None:
        if self._struct.descriptor:
            self._free(self._struct.descriptor)
            self._struct.descriptor = None


class _FILETIME(ctypes.Structure):
    _fields_ = [("low", ctypes.c_uint32), ("high", ctypes.c_uint32)]

    def value(self) -> int:
        return (self.high << 32) | self.low


class _CLIENT_ID(ctypes.Structure):
    _fields_ = [("process", ctypes.c_void_p), ("thread", ctypes.c_void_p)]


class _THREAD_BASIC_INFORMATION(ctypes.Structure):
    _fields_ = [("exit_status", ctypes.c_long), ("teb", ctypes.c_void_p),
                ("client_id", _CLIENT_ID), ("affinity", ctypes.c_size_t),
                ("priority", ctypes.c_long), ("base_priority", ctypes.c_long)]


class Kernel32:
    """The real Win32 calls (kernel32, ntdll, shell32). Each opens a handle with the least
    access the call needs and closes it before returning."""

    def __init__(self) -> None:
        if sys.platform != "win32":
            raise OSError(errno.ENOSYS, "the Win32 API exists only on Windows")
        from ctypes import wintypes as w

        # Any: ctypes' WinDLL and its functions exist only in Windows builds of Python.
        _ct: Any = ctypes
        dll: Any = _ct.WinDLL
        k: Any = dll("kernel32", use_last_error=True)
        self._k: Any = k
        self._nt: Any = dll("ntdll")
        self._shell: Any = dll("shell32")
        self._adv: Any = dll("advapi32", use_last_error=True)
        k.GetNamedPipeClientProcessId.argtypes = [w.HANDLE, ctypes.POINTER(ctypes.c_ulong)]
        self._adv.OpenProcessToken.argtypes = [w.HANDLE, w.DWORD, ctypes.POINTER(ctypes.c_void_p)]
        self._adv.GetTokenInformation.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                                                  w.DWORD, ctypes.POINTER(ctypes.c_ulong)]
        h = w.HANDLE
        k.OpenProcess.restype = h
        k.OpenProcess.argtypes = [w.DWORD, w.BOOL, w.DWORD]
        k.OpenThread.restype = h
        k.OpenThread.argtypes = [w.DWORD, w.BOOL, w.DWORD]
        k.CloseHandle.argtypes = [h]
        k.GetPriorityClass.argtypes = [h]
        k.GetPriorityClass.restype = w.DWORD
        k.SetPriorityClass.argtypes = [h, w.DWORD]
        k.GetThreadPriority.argtypes = [h]
        k.GetThreadPriority.restype = ctypes.c_int
        k.SetThreadPriority.argtypes = [h, ctypes.c_int]
        k.SetThreadAffinityMask.argtypes = [h, ctypes.c_size_t]
        k.SetThreadAffinityMask.restype = ctypes.c_size_t
        k.GetProcessAffinityMask.argtypes = [h, ctypes.POINTER(ctypes.c_size_t),
                                             ctypes.POINTER(ctypes.c_size_t)]
        k.GetProcessTimes.argtypes = [h] + [ctypes.POINTER(_FILETIME)] * 4
        k.GetThreadTimes.argtypes = [h] + [ctypes.POINTER(_FILETIME)] * 4
        k.GetProcessIdOfThread.argtypes = [h]
        k.GetProcessIdOfThread.restype = w.DWORD
        k.QueryFullProcessImageNameW.argtypes = [h, w.DWORD, w.LPWSTR,
                                                 ctypes.POINTER(w.DWORD)]
        k.WaitForSingleObject.argtypes = [h, w.DWORD]
        k.WaitForSingleObject.restype = w.DWORD
        k.GetCurrentProcess.restype = h
        k.GetProcessWorkingSetSizeEx.argtypes = [h, ctypes.POINTER(ctypes.c_size_t),
                                                 ctypes.POINTER(ctypes.c_size_t),
                                                 ctypes.POINTER(w.DWORD)]
        k.SetProcessWorkingSetSizeEx.argtypes = [h, ctypes.c_size_t, ctypes.c_size_t,
                                                 w.DWORD]
        k.VirtualAlloc.restype = ctypes.c_void_p
        k.VirtualAlloc.argtypes = [ctypes.c_void_p, ctypes.c_size_t, w.DWORD, w.DWORD]
        k.VirtualFree.argtypes = [ctypes.c_void_p, ctypes.c_size_t, w.DWORD]
        k.VirtualLock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        k.VirtualUnlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        self._nt.NtQueryInformationThread.argtypes = [h, ctypes.c_int, ctypes.c_void_p,
                                                      ctypes.c_ulong,
                                                      ctypes.POINTER(ctypes.c_ulong)]
        self._nt.NtQueryInformationThread.restype = ctypes.c_long
        a = self._adv
        a.ConvertStringSecurityDescriptorToSecurityDescriptorW.argtypes = [
            w.LPCWSTR, w.DWORD, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(w.ULONG)]
        a.ConvertSecurityDescriptorToStringSecurityDescriptorW.argtypes = [
            ctypes.c_void_p, w.DWORD, w.DWORD, ctypes.POINTER(w.LPWSTR), ctypes.POINTER(w.ULONG)]
        a.GetSecurityInfo.argtypes = [h, ctypes.c_int, w.DWORD] + [ctypes.c_void_p] * 4 + [
            ctypes.POINTER(ctypes.c_void_p)]
        a.GetSecurityInfo.restype = w.DWORD
        a.ConvertSidToStringSidW.argtypes = [ctypes.c_void_p, ctypes.POINTER(w.LPWSTR)]
        k.LocalFree.argtypes = [ctypes.c_void_p]
        k.LocalFree.restype = ctypes.c_void_p

    # --- handles ---

    def _fail(self, what: str) -> Exception:
        _ct: Any = ctypes
        return error(_ct.get_last_error(), what)

    def _open_process(self, pid: int, access: int) -> int:
        handle = self._k.OpenProcess(access, False, pid)
        if not handle:
            raise self._fail(f"OpenProcess({pid})")
        return int(handle)

    def _open_thread(self, tid: int, access: int) -> int:
        handle = self._k.OpenThread(access, False, tid)
        if not handle:
            raise self._fail(f"OpenThread({tid})")
        return int(handle)

    def close(self, handle: int) -> None:
        self._k.CloseHandle(handle)

    # --- priorities ---

    def get_priority_class(self, pid: int) -> int:
        h = self._open_process(pid, PROCESS_QUERY_LIMITED_INFORMATION)
        try:
            value = int(self._k.GetPriorityClass(h))
            if not value:
                raise self._fail(f"GetPriorityClass({pid})")
            return value
        finally:
            self.close(h)

    def set_priority_class(self, pid: int, value: int) -> None:
        h = self._open_process(pid, PROCESS_SET_INFORMATION)
        try:
            if not self._k.SetPriorityClass(h, value):
                raise self._fail(f"SetPriorityClass({pid})")
        finally:
            self.close(h)

    def get_thread_priority(self, tid: int) -> int:
        h = self._open_thread(tid, THREAD_QUERY_LIMITED_INFORMATION)
        try:
            value = int(self._k.GetThreadPriority(h))
            if value == THREAD_PRIORITY_ERROR_RETURN:
                raise self._fail(f"GetThreadPriority({tid})")
            return value
        finally:
            self.close(h)

    def set_thread_priority(self, tid: int, value: int) -> None:
        h = self._open_thread(tid, THREAD_SET_INFORMATION | THREAD_QUERY_INFORMATION)
        try:
            if not self._k.SetThreadPriority(h, value):
                raise self._fail(f"SetThreadPriority({tid})")
        finally:
            self.close(h)

    # --- affinity ---

    def get_thread_affinity(self, tid: int) -> int:
        """The thread's affinity mask: no Get call exists in kernel32, ntdll's
        ThreadBasicInformation (class 0) carries it."""
        h = self._open_thread(tid, THREAD_QUERY_INFORMATION)
        try:
            info = _THREAD_BASIC_INFORMATION()
            status = self._nt.NtQueryInformationThread(h, 0, ctypes.byref(info),
                                                       ctypes.sizeof(info), None)
            if status != 0:
                raise Win32Error(status & 0xFFFFFFFF, f"NtQueryInformationThread({tid})")
            return int(info.affinity)
        finally:
            self.close(h)

    def set_thread_affinity(self, tid: int, mask: int) -> None:
        h = self._open_thread(tid, THREAD_SET_INFORMATION | THREAD_QUERY_INFORMATION)
        try:
            if not self._k.SetThreadAffinityMask(h, mask):
                raise self._fail(f"SetThreadAffinityMask({tid})")
        finally:
            self.close(h)

    def process_affinity(self, pid: int) -> tuple[int, int]:
        """(the process's mask, the system's mask)."""
        h = self._open_process(pid, PROCESS_QUERY_LIMITED_INFORMATION)
        try:
            proc, system = ctypes.c_size_t(), ctypes.c_size_t()
            if not self._k.GetProcessAffinityMask(h, ctypes.byref(proc), ctypes.byref(system)):
                raise self._fail(f"GetProcessAffinityMask({pid})")
            return int(proc.value), int(system.value)
        finally:
            self.close(h)

    # --- identity ---

    def process_creation_time(self, pid: int) -> int:
        """Creation time in 100 ns units since 1601 (FILETIME): with the pid, a process's
        identity (Windows reuses pids too)."""
        h = self._open_process(pid, PROCESS_QUERY_LIMITED_INFORMATION)
        try:
            t = [_FILETIME() for _ in range(4)]
            if not self._k.GetProcessTimes(h, *(ctypes.byref(x) for x in t)):
                raise self._fail(f"GetProcessTimes({pid})")
            return t[0].value()
        finally:
            self.close(h)

    def thread_creation_time(self, tid: int) -> int:
        h = self._open_thread(tid, THREAD_QUERY_LIMITED_INFORMATION)
        try:
            t = [_FILETIME() for _ in range(4)]
            if not self._k.GetThreadTimes(h, *(ctypes.byref(x) for x in t)):
                raise self._fail(f"GetThreadTimes({tid})")
            return t[0].value()
        finally:
            self.close(h)

    def thread_process_id(self, tid: int) -> int:
        h = self._open_thread(tid, THREAD_QUERY_LIMITED_INFORMATION)
        try:
            pid = int(self._k.GetProcessIdOfThread(h))
            if not pid:
                raise self._fail(f"GetProcessIdOfThread({tid})")
            return pid
        finally:
            self.close(h)

    def image_path(self, pid: int) -> str:
        h = self._open_process(pid, PROCESS_QUERY_LIMITED_INFORMATION)
        try:
            from ctypes import wintypes as w

            size = w.DWORD(32768)
            buf = ctypes.create_unicode_buffer(size.value)
            if not self._k.QueryFullProcessImageNameW(h, 0, buf, ctypes.byref(size)):
                raise self._fail(f"QueryFullProcessImageNameW({pid})")
            return buf.value
        finally:
            self.close(h)

    def open_waitable(self, pid: int) -> int:
        return self._open_process(pid, SYNCHRONIZE | PROCESS_QUERY_LIMITED_INFORMATION)

    def has_exited(self, handle: int) -> bool:
        return bool(self._k.WaitForSingleObject(handle, 0) != WAIT_TIMEOUT)

    def is_admin(self) -> bool:
        return bool(self._shell.IsUserAnAdmin())

    def pipe_client_pid(self, pipe_handle: int) -> int:
        """Who is at the other end of a named pipe: the kernel's answer, not the client's
        claim (the pipe's SO_PEERCRED)."""
        pid = ctypes.c_ulong()
        if not self._k.GetNamedPipeClientProcessId(pipe_handle, ctypes.byref(pid)):
            raise self._fail("GetNamedPipeClientProcessId")
        return int(pid.value)

    def process_elevated(self, pid: int) -> bool:
        """Whether pid runs with an elevated (administrator) token."""
        h = self._open_process(pid, PROCESS_QUERY_LIMITED_INFORMATION)
        try:
            token = ctypes.c_void_p()
            if not self._adv.OpenProcessToken(h, TOKEN_QUERY, ctypes.byref(token)):
                raise self._fail(f"OpenProcessToken({pid})")
            try:
                elevated, size = ctypes.c_ulong(), ctypes.c_ulong()
                if not self._adv.GetTokenInformation(token, TOKEN_ELEVATION,
                                                     ctypes.byref(elevated), 4,
                                                     ctypes.byref(size)):
                    raise self._fail(f"GetTokenInformation({pid})")
                return bool(elevated.value)
            finally:
                self.close(int(token.value or 0))
        finally:
            self.close(h)

    # --- security descriptors (the control pipe's) ---

    def user_sid(self) -> str:
        """This process's account as a string SID (S-1-5-...): the pipe's DACL names it
        so that a daemon run by an ordinary user can create its own pipe instances."""
        token = ctypes.c_void_p()
        if not self._adv.OpenProcessToken(self._k.GetCurrentProcess(), TOKEN_QUERY,
                                          ctypes.byref(token)):
            raise self._fail("OpenProcessToken(self)")
        try:
            buf, size = ctypes.create_string_buffer(512), ctypes.c_ulong()
            if not self._adv.GetTokenInformation(token, TOKEN_USER, buf, len(buf),
                                                 ctypes.byref(size)):
                raise self._fail("GetTokenInformation(TokenUser)")
            sid = ctypes.c_void_p.from_buffer(buf).value  # TOKEN_USER.User.Sid
            from ctypes import wintypes as w

            text = w.LPWSTR()
            if not self._adv.ConvertSidToStringSidW(sid, ctypes.byref(text)):
                raise self._fail("ConvertSidToStringSidW")
            try:
                return str(text.value)
            finally:
                self._k.LocalFree(text)
        finally:
            self.close(int(token.value or 0))

    def security_attributes(self, sddl: str) -> SecurityAttributes:
        """SECURITY_ATTRIBUTES holding the descriptor ``sddl`` describes."""
        sd = ctypes.c_void_p()
        if not self._adv.ConvertStringSecurityDescriptorToSecurityDescriptorW(
                sddl, SDDL_REVISION_1, ctypes.byref(sd), None):
            raise self._fail(f"ConvertStringSecurityDescriptorToSecurityDescriptorW({sddl!r})")
        sa = _SECURITY_ATTRIBUTES(ctypes.sizeof(_SECURITY_ATTRIBUTES), sd.value, 0)
        return SecurityAttributes(sa, self._k.LocalFree)

    def handle_dacl(self, handle: int) -> str:
        """The DACL of the object behind ``handle``, read back as SDDL ("D:..."): what the
        object really carries, not what was asked for."""
        sd = ctypes.c_void_p()
        rc = self._adv.GetSecurityInfo(handle, SE_KERNEL_OBJECT, DACL_SECURITY_INFORMATION,
                                       None, None, None, None, ctypes.byref(sd))
        if rc != 0:
            raise error(int(rc), "GetSecurityInfo")
        try:
            from ctypes import wintypes as w

            text = w.LPWSTR()
            if not self._adv.ConvertSecurityDescriptorToStringSecurityDescriptorW(
                    sd, SDDL_REVISION_1, DACL_SECURITY_INFORMATION, ctypes.byref(text), None):
                raise self._fail("ConvertSecurityDescriptorToStringSecurityDescriptorW")
            try:
                return str(text.value)
            finally:
                self._k.LocalFree(text)
        finally:
            self._k.LocalFree(sd)

    # --- memory (this process) ---

    def get_working_set(self) -> tuple[int, int]:
        from ctypes import wintypes as w

        lo, hi, flags = ctypes.c_size_t(), ctypes.c_size_t(), w.DWORD()
        if not self._k.GetProcessWorkingSetSizeEx(self._k.GetCurrentProcess(),
                                                  ctypes.byref(lo), ctypes.byref(hi),
                                                  ctypes.byref(flags)):
            raise self._fail("GetProcessWorkingSetSizeEx")
        return int(lo.value), int(hi.value)

    def set_working_set(self, minimum: int, maximum: int) -> None:
        # Soft limits (both *_DISABLE flags): the minimum is what VirtualLock may lock.
        if not self._k.SetProcessWorkingSetSizeEx(
                self._k.GetCurrentProcess(), minimum, maximum,
                QUOTA_LIMITS_HARDWS_MIN_DISABLE | QUOTA_LIMITS_HARDWS_MAX_DISABLE):
            raise self._fail(f"SetProcessWorkingSetSizeEx({minimum}, {maximum})")

    def virtual_alloc(self, size: int) -> int:
        addr = self._k.VirtualAlloc(None, size, MEM_COMMIT | MEM_RESERVE, PAGE_READWRITE)
        if not addr:
            raise self._fail(f"VirtualAlloc of {size} bytes")
        return int(addr)

    def virtual_free(self, address: int) -> None:
        if not self._k.VirtualFree(address, 0, MEM_RELEASE):
            raise self._fail("VirtualFree")

    def virtual_lock(self, address: int, size: int) -> None:
        if not self._k.VirtualLock(address, size):
            raise self._fail(f"VirtualLock of {size} bytes")

    def virtual_unlock(self, address: int, size: int) -> None:
        if not self._k.VirtualUnlock(address, size):
            raise self._fail(f"VirtualUnlock of {size} bytes")
