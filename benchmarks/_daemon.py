"""Start and stop a daemon for a benchmark (shared by the daemon benchmarks)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

from ainative.ipc.client import Client, DaemonError


class BenchDaemon:
    def __init__(self, *args: str, rules_text: str | None = None) -> None:
        self.tmp = tempfile.mkdtemp(prefix="ainative-bench-")
        self.sock = os.path.join(self.tmp, "s.sock")
        argv = [sys.executable, "-m", "ainative", "daemon", "--socket", self.sock,
                "--state-dir", os.path.join(self.tmp, "state"), "--rules-dir", "",
                "--cgroup-root", f"ainative-bench-{os.getpid()}", *args]
        if rules_text:
            path = os.path.join(self.tmp, "rules.toml")
            with open(path, "w") as fh:
                fh.write(rules_text)
            argv += ["--rules", path]
        self.log = open(os.path.join(self.tmp, "daemon.log"), "w")
        self.proc = subprocess.Popen(argv, stderr=self.log, stdout=subprocess.DEVNULL)
        end = time.monotonic() + 20
        while True:
            try:
                Client(self.sock).request("ping")
                break
            except DaemonError:
                if self.proc.poll() is not None or time.monotonic() > end:
                    raise SystemExit(f"daemon did not start; log in {self.log.name}") from None
                time.sleep(0.05)

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
        self.proc.terminate()
        self.proc.wait(30)
