"""A name -> factory registry in the style of torchvision/timm (`register`, `names`, `get`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from locbench.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps short names (``"resnet32"``, ``"dgl"``) to objects, with one-line errors for typos."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorate(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorate

    def add(self, name: str, obj: T) -> None:
        if name in self._items and self._items[name] is not obj:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj

    def remove(self, name: str) -> None:
        """Forget ``name`` (what a test registered); an unknown name is ignored."""
        self._items.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._items)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UserError(
                f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._items
