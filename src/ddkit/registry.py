"""One small generic registry: names are the public API.

Every family (datasets, models, methods, recipes) uses the same mechanism so that
`list_*()` works, peers' spellings resolve as aliases and an unknown name fails with
the list of known ones (never a silent fallback).
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, Dict, Generic, Iterable, List, Optional, TypeVar

T = TypeVar("T")


def _norm(name: str) -> str:
    # Case-insensitive and tolerant to '-' vs '_' so `ConvNet-3` == `convnet_3`.
    return name.strip().lower().replace("_", "-")


class UnknownNameError(KeyError):
    """Raised for an unknown registry name; the message lists the known names."""

    def __str__(self) -> str:  # KeyError quotes its message; we want a plain line.
        return str(self.args[0])


class Registry(Generic[T]):
    """A name -> object table with aliases.

    Example:
        >>> r = Registry("method")
        >>> @r.register("random", aliases=("rand",))
        ... def f(): ...
        >>> r.get("RAND") is f
        True
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: Dict[str, T] = {}
        self._aliases: Dict[str, str] = {}
        self._display: Dict[str, str] = {}

    def register(self, name: str, aliases: Iterable[str] = (), obj: Optional[T] = None) -> Callable[[T], T] | T:
        """Register `obj` (or decorate) under `name` plus `aliases`."""

        def deco(o: T) -> T:
            key = _norm(name)
            if key in self._items or key in self._aliases:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            # An alias must not shadow a name either: aliases resolve first, so a plugin's alias `random`
            # would silently replace the built-in method (#25). Checked before anything is stored.
            for a in aliases:
                ak = _norm(a)
                if ak != key and (ak in self._items or ak in self._aliases):
                    owner = self._display.get(self._aliases.get(ak, ak), a)
                    raise ValueError(f"{self.kind} {name!r}: alias {a!r} is already taken by {self.kind} "
                                     f"{owner!r}; a registration never replaces a name: choose another alias")
            self._items[key] = o
            self._display[key] = name
            for a in aliases:
                self._aliases[_norm(a)] = key
            return o

        return deco(obj) if obj is not None else deco

    def unregister(self, name: str) -> None:
        """Remove `name` and its aliases (a plugin being reloaded or replaced; test clean-up)."""
        key = _norm(self.resolve(name))
        del self._items[key], self._display[key]
        for a in [a for a, k in self._aliases.items() if k == key]:
            del self._aliases[a]

    def resolve(self, name: str) -> str:
        """Canonical name for `name` or alias; raises UnknownNameError listing known names."""
        key = _norm(name)
        key = self._aliases.get(key, key)
        if key not in self._items:
            known = self.names()
            close = difflib.get_close_matches(key, [_norm(k) for k in known] + list(self._aliases), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UnknownNameError(f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(known)}")
        return self._display[key]

    def unregister(self, name: str) -> None:
        """Remove `name` and its aliases (a test's or a plugin's temporary entry); unknown names fail."""
        key = _norm(self.resolve(name))
        del self._items[key], self._display[key]
        for a in [a for a, k in self._aliases.items() if k == key]:
            del self._aliases[a]

    def get(self, name: str) -> T:
        return self._items[_norm(self.resolve(name))]

    def __contains__(self, name: str) -> bool:
        key = _norm(name)
        return key in self._items or key in self._aliases

    def names(self) -> List[str]:
        return sorted(self._display.values())

    def aliases_of(self, name: str) -> List[str]:
        key = _norm(self.resolve(name))
        return sorted(a for a, k in self._aliases.items() if k == key)

    def items(self) -> List[tuple[str, Any]]:
        return [(self._display[k], v) for k, v in sorted(self._items.items())]
