"""One registry of named factories, for generators, inverters and recognizers alike."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Generic, TypeVar

Factory = TypeVar("Factory")


class Registry(Generic[Factory]):
    """Factories by name; ``kind`` names what they build in the error for an unknown name."""

    def __init__(self, kind: str, factories: Mapping[str, Factory]) -> None:
        self.kind = kind
        self.factories = dict(factories)

    def register(self, name: str, factory: Factory) -> None:
        """Add ``name``, or replace what it builds."""
        self.factories[name] = factory

    def names(self) -> list[str]:
        return sorted(self.factories)

    def factory(self, name: str) -> Factory:
        """The factory of ``name``; ValueError naming the known ones otherwise."""
        try:
            return self.factories[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}") from None

    def __contains__(self, name: object) -> bool:
        return name in self.factories
