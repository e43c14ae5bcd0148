"""What a pool of a given size would get on this machine, without making one: locking,
huge pages, NUMA placement and CUDA registration, each with the reason."""

from __future__ import annotations

import ctypes.util
from typing import Any

from ainative.mem.arena import HUGE_PAGE, gpu_numa_node, numa_nodes, thp_mode
from ainative.mem.limits import lock_limits


def forecast(size: int, numa_node: int | None = None) -> dict[str, Any]:
    lim = lock_limits()
    out: dict[str, Any] = {
        "size": size,
        "rlimit_memlock_soft": lim.soft, "rlimit_memlock_hard": lim.hard,
        "cap_ipc_lock": lim.cap_ipc_lock, "locked_now": lim.locked_now,
    }
    if lim.allows(size):
        why = ("CAP_IPC_LOCK lifts RLIMIT_MEMLOCK" if lim.cap_ipc_lock else
               "within RLIMIT_MEMLOCK" if lim.soft is not None else "RLIMIT_MEMLOCK unlimited")
        out["locked"], out["lock_detail"] = True, why
    else:
        out["locked"], out["lock_detail"] = False, lim.explain(size)

    mode = thp_mode()
    out["transparent_hugepages"] = mode
    if mode in ("never", "unavailable"):
        out["hugepages"], out["hugepages_detail"] = False, f"THP is {mode}"
    elif size < HUGE_PAGE:
        out["hugepages"], out["hugepages_detail"] = False, "smaller than one 2 MiB page"
    else:
        out["hugepages"], out["hugepages_detail"] = True, f"MADV_HUGEPAGE (THP {mode})"

    nodes = numa_nodes()
    out["numa_nodes"] = nodes
    node = numa_node if numa_node is not None else (gpu_numa_node() if len(nodes) > 1
                                                    else None)
    if numa_node is not None and numa_node not in nodes:
        out["numa_node"], out["numa_detail"] = None, f"node {numa_node} does not exist"
    elif node is None:
        out["numa_node"] = None
        out["numa_detail"] = (f"{len(nodes)} node(s): no binding needed" if len(nodes) <= 1
                              else "not bound: no node asked for and no GPU node known")
    elif ctypes.util.find_library("numa") is None:
        out["numa_node"], out["numa_detail"] = None, "libnuma not installed"
    else:
        out["numa_node"], out["numa_detail"] = node, f"bound to node {node} (libnuma)"

    from ainative.mem.cuda import find_runtime

    rt, why = find_runtime()
    out["cuda_registered"], out["cuda_detail"] = rt is not None, why
    return out
