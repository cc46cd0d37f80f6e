"""Reading every string an object keeps, to show that secrets were not kept."""

from __future__ import annotations

import threading
from typing import Any


def strings_in(root: Any) -> list[str]:
    """Every string reachable from ``root``'s state (attributes, containers, closures)."""
    found: list[str] = []
    stack, seen = [root], set()
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, str):
            found.append(obj)
        elif isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            stack.extend(obj)
        elif callable(obj) and getattr(obj, "__closure__", None):
            stack.extend(cell.cell_contents for cell in obj.__closure__)
        elif isinstance(obj, threading.local) or (
            hasattr(obj, "__dict__") and not isinstance(obj, threading.Thread | type)
        ):
            stack.extend(vars(obj).values())
    return found
