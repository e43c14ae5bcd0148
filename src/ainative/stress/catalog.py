"""Names the command line needs before anything heavy is imported: the built-in models
and the --compare scenarios. (Importing NumPy and ONNX here would slow every ainative
command, the daemon's start included.)"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    description: str


# Per-call times measured on a 2-core VM, one ONNX Runtime thread.
BUILTIN = {
    "mlp-small": BuiltinModel("mlp-small", "MLP 256->1024->256: ~0.03 ms at batch 1"),
    "mlp": BuiltinModel("mlp", "4-layer MLP 256->1024->1024->1024->256: ~0.25 ms at batch 8"),
    "attention": BuiltinModel("attention", "self-attention block, 128 tokens x 256 dims: "
                              "~0.4 ms at batch 1, ~3 ms at batch 8"),
}

SCENARIOS = ("alone", "contended", "ainative", "nice", "chrt", "cgroup")
DESCRIPTIONS = {
    "alone": "no contention",
    "contended": "with the hogs, nothing done",
    "ainative": "hogs + ainative daemon (automatic)",
    "nice": "hogs + server and client under nice -n -10",
    "chrt": "hogs + server and client under chrt -f 10",
    "cgroup": "hogs demoted to a cgroup (cpu.shares=2 / cpu.weight=1)",
}
