"""How a scenario's child processes hand their result to the parent."""

from __future__ import annotations

import json
import os
from typing import Any


def write_result(path: str, out: dict[str, Any]) -> int:
    """Write a child's result atomically (the parent never reads half a file); the exit
    code says whether it holds an error."""
    with open(path + ".tmp", "w") as fh:
        json.dump(out, fh)
    os.replace(path + ".tmp", path)
    return 0 if "error" not in out else 1
