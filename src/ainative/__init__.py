"""ainative: an AI-native layer for ordinary Linux machines.

Finds AI workloads, protects their latency from everything else on the machine,
gives them a pinned-memory pool, and measures what it did.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
