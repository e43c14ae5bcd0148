"""Start and stop a daemon for a benchmark (shared by the daemon benchmarks), through
the one launcher of private daemons (ainative.ipc.launcher)."""

from __future__ import annotations

import os
import tempfile

from ainative.ipc.launcher import LaunchError, ScopedDaemon


class BenchDaemon:
    def __init__(self, *args: str, rules_text: str | None = None,
                 scope_pid: int | None = None, shared_socket: bool = True) -> None:
        self.tmp = tempfile.mkdtemp(prefix="ainative-bench-")
        os.chmod(self.tmp, 0o755)  # other users' benchmarks reach the socket below it
        self.daemon = ScopedDaemon(self.tmp, scope_pid=scope_pid, rules_text=rules_text,
                                   cgroup_root=f"ainative-bench-{os.getpid()}",
                                   extra_args=args, shared_socket=shared_socket)
        self.sock = self.daemon.sock
        try:
            self.daemon.start()
        except LaunchError as e:
            raise SystemExit(f"{e}; log in {self.daemon.log_path}") from None
        assert self.daemon.proc is not None
        self.proc = self.daemon.proc

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as fh:
            f = fh.read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        self.daemon.close()
