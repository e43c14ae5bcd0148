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
    # The seed's "inference 30 ms" row needs a model of about that size.
    "attention-large": BuiltinModel("attention-large", "self-attention block, 1024 tokens x "
                                    "768 dims: ~35 ms at batch 1"),
}

# What --compare runs unless --scenarios says otherwise.
DEFAULT_SCENARIOS = ("alone", "contended", "ainative", "nice", "chrt", "cgroup")
# The daemon with one of its defaults taken back, for that default's before/after in one
# run (benchmarks/bench_guard_tail.py): the rule text it adds to its built-in rules.
ABLATIONS = {
    "ainative-noloop": "[guard]\nenabled = false\n",
    "ainative-noslice": '[classes.inference]\nslice = "default"\n',
}
SCENARIOS = (*DEFAULT_SCENARIOS, *ABLATIONS)
DESCRIPTIONS = {
    "alone": "no contention",
    "contended": "with the hogs, nothing done",
    "ainative": "hogs + ainative daemon (automatic)",
    "ainative-noloop": "hogs + ainative daemon with its closed loop off ([guard] enabled = false)",
    "ainative-noslice": "hogs + ainative daemon, serving left at the kernel's default slice",
    "nice": "hogs + server and client under nice -n -10",
    "chrt": "hogs + server and client under chrt -f 10",
    "cgroup": "hogs demoted to a cgroup (cpu.shares=2 / cpu.weight=1)",
}

# What a stress run measures (config.WorkloadConfig.mode; modes.py runs each).
MODES = {
    "latency": "open loop at --rate: latency from each request's scheduled time",
    "throughput": "closed loop: each connection sends its next request as soon as the last "
                  "one is answered; the most requests (and samples) per second",
    "frames": "one frame at a time at --fps: frames on time per second and deadline misses "
              "(a frame is due one period after its start time; one that cannot start "
              "within a period is skipped)",
}
