"""One registry shape for every pluggable component: names -> creator functions.

A creator imports its implementation when it is called, so a registry never imports what it
registers at module load (no import cycles, no heavy imports for an unused backend):

    ATTENTION_BACKENDS: Registry[type[AttentionBackend]] = Registry("attention backend")

    @ATTENTION_BACKENDS.register("torch")
    def _torch() -> type[AttentionBackend]:
        from pagoda.attention.torch_backend import TorchAttentionBackend
        return TorchAttentionBackend

Used for attention backends, grammar backends, data-parallel routers and model architectures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")
C = TypeVar("C", bound=Callable[..., Any])  # a creator: a function or a class


class UnknownNameError(ValueError):
    """A name no creator is registered under; the message names the kind and the choices."""


class Registry(Generic[T]):
    """Creator functions by name. Contract: ``register`` refuses a name twice (a plugin cannot
    silently replace a built-in); ``get`` raises ``UnknownNameError`` listing the choices;
    ``create(name, ...)`` calls the creator with the arguments given and returns what it makes."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._creators: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[C], C]:
        def wrap(creator: C) -> C:
            if name in self._creators:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._creators[name] = creator
            return creator
        return wrap

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._creators[name]
        except KeyError:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; choose from {self.names()}") from None

    def create(self, name: str, *args: Any, **kwargs: Any) -> T:
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._creators)

    def __contains__(self, name: object) -> bool:
        return name in self._creators
