"""Several provider accounts in one app: each with its endpoint, secrets, guard and ledger space.

Agencies and resellers run their customers' API keys, each with its own webhook endpoint
and secret. An :class:`Account` names one; a receiver built with ``accounts=`` serves each
at ``<path>/<name>`` (or the account's own ``path``), verifies with that account's secrets
only, counts that endpoint's failures on its own guard, and keys its records under the
account's name, so nothing one account does touches another.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .errors import ConfigurationError, RequestRejected
from .signature import Verifier, parse_secrets

__all__ = ["Account", "AccountResolver", "Endpoint", "UnknownEndpoint"]

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


class UnknownEndpoint(RequestRejected):
    """No account serves this path."""

    status = 404
    code = "unknown_endpoint"


@dataclass(frozen=True)
class Account:
    """One provider account: its name, its webhook secrets (rotation: several), its API key.

    ``name`` keys its ledger records and its endpoint (``<path>/<name>`` unless ``path`` is
    given). The secrets are never shown: ``repr`` leaves them out.
    """

    name: str
    secrets: Sequence[str] | str = field(repr=False)
    api_key: str | None = field(default=None, repr=False)
    path: str | None = None

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ConfigurationError(
                f"account name must be 1-64 lower-case letters, digits, - or _: {self.name!r}"
            )
        if self.path is not None and not self.path.startswith("/"):
            raise ConfigurationError(f"account path must start with '/': {self.path!r}")
        parse_secrets(self.secrets)  # fail at start-up, naming what is wrong


#: Look an account up by name (from settings, a database...); None: no such account.
AccountResolver = Callable[[str], "Account | None"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """What a request's path resolves to: whose secrets, guard and ledger space apply."""

    verifier: Verifier
    #: Ledger key prefix ("" for a receiver without accounts).
    namespace: str
    #: The guard's counter in the ledger.
    counter: str
    account: str | None = None


class Accounts:
    """Resolve request paths to endpoints: a fixed list, or a resolver with a short cache."""

    def __init__(
        self, base: str, accounts: Sequence[Account] | AccountResolver, ttl: float = 60.0
    ) -> None:
        self.base = base.rstrip("/")
        self.ttl = ttl
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, Endpoint | None]] = {}
        self._resolver: AccountResolver | None = None
        self._by_name: dict[str, Account] = {}
        self._by_path: dict[str, str] = {}
        if callable(accounts):
            self._resolver = accounts
            return
        for account in accounts:
            if account.name in self._by_name:
                raise ConfigurationError(f"two accounts are named {account.name!r}")
            self._by_name[account.name] = account
            path = account.path or f"{self.base}/{account.name}"
            if path in self._by_path:
                raise ConfigurationError(f"two accounts share the path {path!r}")
            self._by_path[path] = account.name
        if not self._by_name:
            raise ConfigurationError("accounts= needs at least one Account")

    @property
    def paths(self) -> tuple[str, ...]:
        """The fixed accounts' paths (a resolver's are ``<base>/<name>``)."""
        return tuple(self._by_path)

    def serves(self, path: str) -> bool:
        """Tell whether ``path`` may belong to an account (an adapter's routing test)."""
        return path in self._by_path or path.startswith(self.base + "/")

    def endpoint(self, path: str) -> Endpoint:
        """Resolve a request path, or raise :class:`UnknownEndpoint`."""
        name = self._by_path.get(path) or path.rstrip("/").rsplit("/", 1)[-1]
        found = self.by_name(name)
        if found is None:
            raise UnknownEndpoint("no webhook endpoint here")
        return found

    def by_name(self, name: str) -> Endpoint | None:
        """Return the endpoint of the account ``name`` (cached), or None."""
        now = time.monotonic()
        cached = self._cache.get(name)
        if cached is not None and (self._resolver is None or now - cached[0] < self.ttl):
            return cached[1]
        account = self._lookup(name)
        endpoint = None
        if account is not None:
            endpoint = Endpoint(
                Verifier(parse_secrets(account.secrets)),
                f"{account.name}:",
                f"guard:account:{account.name}",
                account.name,
            )
        with self._lock:
            self._cache[name] = (now, endpoint)
        return endpoint

    def api_key(self, name: str) -> str | None:
        """Return the account's API key, for polling the provider."""
        account = self._lookup(name)
        return None if account is None else account.api_key

    def _lookup(self, name: str) -> Account | None:
        if not _NAME.fullmatch(name):
            return None
        if self._resolver is None:
            return self._by_name.get(name)
        account = self._resolver(name)
        if account is not None and account.name != name:
            raise ConfigurationError(f"the account resolver answered {account.name!r} for {name!r}")
        return account
