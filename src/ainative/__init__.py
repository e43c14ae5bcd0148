"""ainative: an AI-native layer for ordinary Linux machines.

Finds AI workloads, protects their latency from everything else on the machine,
gives them a pinned-memory pool, and measures what it did.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers only; at run time they load on first use
    from ainative.telemetry.span import span, traced

__version__ = "0.1.0"

__all__ = ["PinnedBuffer", "PinnedPool", "PoolExhausted", "__version__", "span", "traced"]

_LAZY = {"PinnedPool", "PinnedBuffer", "PoolExhausted"}
_LAZY_SPANS = {"span", "traced"}


def __getattr__(name: str) -> Any:
    # Imported on first use so that `import ainative` (the CLI, the daemon) stays cheap.
    if name in _LAZY:
        from ainative import mem

        return getattr(mem, name)
    if name in _LAZY_SPANS:
        from ainative.telemetry import span as spans

        value = getattr(spans, name)
        globals()[name] = value  # later lookups skip this function (spans are a hot path)
        return value
    raise AttributeError(f"module 'ainative' has no attribute {name!r}")
