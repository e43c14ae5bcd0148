"""How messages name a user and a kind of file ("uid 1001 (alice)", "a FIFO"): one
wording for every refusal the daemon, the journal and the rule loader give."""

from __future__ import annotations

import stat
import sys

if sys.platform != "win32":
    import pwd

_KINDS = ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
          (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISLNK, "a symbolic link"))


def user_label(uid: int) -> str:
    if sys.platform == "win32":
        return f"uid {uid}"
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except (KeyError, OverflowError, ValueError):
        return f"uid {uid}"


def file_kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "an unknown kind of file")
