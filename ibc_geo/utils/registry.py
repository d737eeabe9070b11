"""A name -> class map with a ``register`` decorator, for open sets that users extend."""
from __future__ import annotations

import difflib
from typing import Callable, Dict, Iterator, TypeVar

T = TypeVar("T")


def closest(name: str, choices, n: int = 3) -> list[str]:
    """The ``n`` choices closest to ``name`` (difflib ratio), best first."""
    return difflib.get_close_matches(str(name), [str(c) for c in choices], n=n, cutoff=0.4)


class Registry:
    """Maps names to classes or functions.

    >>> TOPOLOGIES = Registry("topology")
    >>> @TOPOLOGIES.register("full")
    ... class FullTopology: ...
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, Callable] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise KeyError(f"{self.kind} {name!r} is already registered to {self._items[name]!r}")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> Callable:
        if name not in self._items:
            hint = closest(name, self._items)
            did_you_mean = f" Did you mean {', '.join(map(repr, hint))}?" if hint else ""
            raise KeyError(
                f"unknown {self.kind} {name!r}; registered: {', '.join(sorted(self._items))}.{did_you_mean}"
            )
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
