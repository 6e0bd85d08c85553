"""Handler registration and the metadata each handler receives.

Order, for one delivery: the handlers registered for its event name, in registration
order, then the catch-all handlers (``"*"``), in registration order. A receiver's own
handlers come before those registered on the shared registry with the module-level
:func:`on`. The first handler that raises stops the chain and fails the delivery; a
retry runs the whole chain again, so handlers should be idempotent or use the ledger's
transaction where the store offers one.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeVar, overload

from .errors import ConfigurationError
from .events import EVENT_TYPES, Event, GenerationFailed, GenerationSucceeded

if TYPE_CHECKING:
    from .signature import Match

__all__ = ["CATCH_ALL", "Delivery", "HandlerSpec", "Registry"]

CATCH_ALL = "*"


@dataclass(frozen=True, slots=True)
class Delivery:
    """What a handler knows about the delivery beside the event itself."""

    #: ``X-Gptimg-Delivery`` of this attempt (unsigned: for logs, not for identity).
    id: str
    #: The event name from the signed body.
    event: str
    #: Ledger key: hex SHA-256 of the signed body.
    key: str
    #: Which configured secret verified the signature.
    secret: Match
    #: Unix time the receiver got the delivery.
    received_ts: float
    #: 1 for the first run of the handlers, 2 for the run after a failure, and so on.
    attempt: int
    #: The store's open transaction (a connection, or Django's atomic block) when the
    #: store is transactional; writes made through it commit with the done mark.
    transaction: Any = None
    #: The account the delivery is for, when the receiver serves several (``accounts=``).
    account: str | None = None

    @property
    def received_at(self) -> datetime:
        """Return when the receiver got the delivery, timezone-aware (UTC)."""
        return datetime.fromtimestamp(self.received_ts, tz=timezone.utc)


class HandlerSpec(NamedTuple):
    """A registered handler and how to call it."""

    func: Callable[..., Any]
    wants_delivery: bool
    is_async: bool


ErrorHook = Callable[[BaseException, Event, Delivery], Any]

_S = TypeVar(
    "_S",
    bound=Callable[[GenerationSucceeded], object]
    | Callable[[GenerationSucceeded, Delivery], object],
)
_F = TypeVar(
    "_F",
    bound=Callable[[GenerationFailed], object] | Callable[[GenerationFailed, Delivery], object],
)
_A = TypeVar("_A", bound=Callable[[Any], object] | Callable[[Any, Delivery], object])
_E = TypeVar("_E", bound=ErrorHook)


def _spec(func: Callable[..., Any]) -> HandlerSpec:
    if not callable(func):
        raise ConfigurationError(f"handler {func!r} is not callable")
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):  # some builtins and C callables
        return HandlerSpec(func, False, False)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    varargs = any(p.kind is p.VAR_POSITIONAL for p in params)
    wants = varargs or len(positional) >= 2
    call = getattr(func, "__call__", None)  # noqa: B004 - async __call__ on instances
    is_async = inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(call)
    return HandlerSpec(func, wants, is_async)


class Registry:
    """Handlers by event name, a catch-all list and error hooks."""

    def __init__(self) -> None:
        self._by_name: dict[str, list[HandlerSpec]] = {}
        self._error_hooks: list[ErrorHook] = []
        self._cache: dict[str, tuple[HandlerSpec, ...]] = {}
        self._catch_all: tuple[HandlerSpec, ...] = ()

    @overload
    def on(
        self, name: Literal["generation.succeeded"], /, *, allow_unknown: bool = ...
    ) -> Callable[[_S], _S]: ...
    @overload
    def on(
        self, name: Literal["generation.failed"], /, *, allow_unknown: bool = ...
    ) -> Callable[[_F], _F]: ...
    @overload
    def on(self, *names: str, allow_unknown: bool = ...) -> Callable[[_A], _A]: ...

    def on(self, *names: str, allow_unknown: bool = False) -> Callable[[Any], Any]:
        """Register the decorated function for one or more event names, or ``"*"``.

        An unknown name fails fast (it is usually a typo) unless ``allow_unknown``.
        """
        if not names:
            raise ConfigurationError("on() needs at least one event name, or '*'")
        for name in names:
            if name != CATCH_ALL and name not in EVENT_TYPES and not allow_unknown:
                known = ", ".join(sorted(EVENT_TYPES))
                raise ConfigurationError(
                    f"unknown event name {name!r} (known: {known}; '*' for all). "
                    "Pass allow_unknown=True to register for an event this version "
                    "does not know yet."
                )

        def register(func: Any) -> Any:
            spec = _spec(func)
            for name in names:
                self._by_name.setdefault(name, []).append(spec)
            self._cache.clear()
            self._catch_all = tuple(self._by_name.get(CATCH_ALL, ()))
            return func

        return register

    def on_error(self, func: _E) -> _E:
        """Register ``func(exc, event, delivery)`` to run when a handler raises."""
        self._error_hooks.append(func)
        return func

    def lookup(self, name: str) -> tuple[tuple[HandlerSpec, ...], tuple[HandlerSpec, ...]]:
        """Return (handlers for ``name``, catch-all handlers)."""
        found = self._cache.get(name)
        if found is None:
            found = self._cache[name] = tuple(self._by_name.get(name, ()))
        return found, self._catch_all

    @property
    def error_hooks(self) -> tuple[ErrorHook, ...]:
        return tuple(self._error_hooks)

    def clear(self) -> None:
        """Forget every handler and hook (for tests)."""
        self._by_name.clear()
        self._error_hooks.clear()
        self._cache.clear()
        self._catch_all = ()
