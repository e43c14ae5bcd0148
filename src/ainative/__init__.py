"""ainative: an AI-native layer for ordinary Linux machines.

Finds AI workloads, protects their latency from everything else on the machine,
gives them a pinned-memory pool, and measures what it did.
"""

from typing import Any

__version__ = "0.1.0"

__all__ = ["PinnedBuffer", "PinnedPool", "PoolExhausted", "__version__"]

_LAZY = {"PinnedPool", "PinnedBuffer", "PoolExhausted"}


def __getattr__(name: str) -> Any:
    # Imported on first use so that `import ainative` (the CLI, the daemon) stays cheap.
    if name in _LAZY:
        from ainative import mem

        return getattr(mem, name)
    raise AttributeError(f"module 'ainative' has no attribute {name!r}")
