"""The admin password that guards retraining, promotion and rollback.

Screening and evaluation are open to every clinician; changing which model serves patients is not.
The password comes from the environment (``CXR_ADMIN_PASSWORD``, for Docker and CI) or from the
dashboard's ``.streamlit/secrets.toml`` (``admin_password = "..."``, or ``password`` under an
``[admin]`` table), read here with ``tomllib`` so the core never imports streamlit. It is compared in
constant time, and every wrong try makes the next one wait longer (1 s, 2 s, 4 s, ... up to a
minute) for the client that made it: its browser session and its address both wait, so opening new
tabs does not help a guesser, and a guesser elsewhere cannot lock the administrator out.
Without a configured password the admin actions stay locked: there is no default password.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
import tomllib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cxr_core.settings import PROJECT_ROOT

ENV_PASSWORD = "CXR_ADMIN_PASSWORD"
ENV_SECRETS_FILE = "CXR_SECRETS_FILE"
DEFAULT_SECRETS_FILE = PROJECT_ROOT / ".streamlit" / "secrets.toml"

FIRST_DELAY_S = 1.0
MAX_DELAY_S = 60.0


def secrets_file() -> Path:
    """The secrets.toml to read (``CXR_SECRETS_FILE`` moves it, e.g. to a mounted Docker secret)."""
    return Path(os.environ.get(ENV_SECRETS_FILE) or DEFAULT_SECRETS_FILE)


def configured_password(secrets_path: str | os.PathLike | None = None) -> str | None:
    """The admin password, or None when none is set (admin actions then stay locked)."""
    from_env = os.environ.get(ENV_PASSWORD)
    if from_env:
        return from_env
    path = Path(secrets_path) if secrets_path is not None else secrets_file()
    try:
        with open(path, "rb") as handle:
            secrets = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError):
        return None
    value = secrets.get("admin_password")
    if value is None and isinstance(secrets.get("admin"), dict):
        value = secrets["admin"].get("password")
    return value if isinstance(value, str) and value else None


def how_to_configure() -> str:
    """What an operator must do to enable the admin actions, for the screen."""
    return (
        f"No admin password is configured. Set the environment variable {ENV_PASSWORD}, or put "
        f'admin_password = "..." in {DEFAULT_SECRETS_FILE.relative_to(PROJECT_ROOT)} '
        "(see .streamlit/secrets.toml.example), then reload this page."
    )


@dataclass
class AuthResult:
    ok: bool
    message: str
    retry_after: float = 0.0


class Throttle:
    """Failed attempts of one client and the time before its next attempt is accepted."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self.failures = 0
        self.blocked_until = 0.0

    def wait_seconds(self) -> float:
        with self._lock:
            return max(0.0, self.blocked_until - self._clock())

    def fail(self) -> float:
        """Record a wrong password; returns the delay imposed before the next try."""
        with self._lock:
            self.failures += 1
            delay = min(MAX_DELAY_S, FIRST_DELAY_S * 2 ** (self.failures - 1))
            self.blocked_until = self._clock() + delay
            return delay

    def succeed(self) -> None:
        with self._lock:
            self.failures = 0
            self.blocked_until = 0.0


class ThrottleBook:
    """One :class:`Throttle` per client key (a browser session, a client address).

    A single shared throttle let five wrong guesses from anyone lock the real administrator out. Keyed
    per client, an attacker slows only himself: his session and his address wait, the administrator's
    do not. Keys are kept for the most recent ``max_clients`` only, so memory stays bounded.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_clients: int = 10_000):
        self._clock = clock
        self._lock = threading.Lock()
        self._max = max_clients
        self._book: OrderedDict[str, Throttle] = OrderedDict()

    def throttles(self, keys: tuple[str, ...]) -> list[Throttle]:
        with self._lock:
            found = []
            for key in keys:
                throttle = self._book.pop(key, None) or Throttle(self._clock)
                self._book[key] = throttle  # most recently used last
                found.append(throttle)
            while len(self._book) > self._max:
                self._book.popitem(last=False)
            return found

    def clear(self) -> None:
        with self._lock:
            self._book.clear()


_BOOK = ThrottleBook()
_LOG = logging.getLogger("cxr_core.auth")


def reset_throttle() -> None:
    """Forget failed attempts (tests; an operator restarting the dashboard does the same)."""
    _BOOK.clear()


def check_password(
    candidate: str | None,
    expected: str | None = None,
    *,
    client: tuple[str, ...] = ("local",),
    throttle: Throttle | None = None,
    book: ThrottleBook | None = None,
) -> AuthResult:
    """Compare ``candidate`` with the admin password in constant time, under a growing per-client delay.

    ``client`` names the caller by every key it should be throttled under (``session:...``,
    ``address:...``); the longest wait among them applies. Attempts are logged by client, never with
    the password.
    """
    throttles = [throttle] if throttle is not None else (book or _BOOK).throttles(client)
    expected = expected if expected is not None else configured_password()
    if not expected:
        return AuthResult(False, how_to_configure())
    wait = max(item.wait_seconds() for item in throttles)
    if wait > 0:
        _LOG.warning("admin password attempt refused while throttled: client %s", ", ".join(client))
        return AuthResult(
            False, f"Too many wrong passwords. Try again in {_seconds(wait)}.", retry_after=wait
        )
    if not candidate:
        return AuthResult(False, "Enter the admin password.")
    if hmac.compare_digest(candidate.encode("utf-8"), expected.encode("utf-8")):
        for item in throttles:
            item.succeed()
        _LOG.info("admin actions unlocked: client %s", ", ".join(client))
        return AuthResult(True, "Admin actions unlocked.")
    delay = max(item.fail() for item in throttles)
    _LOG.warning("wrong admin password: client %s", ", ".join(client))
    return AuthResult(
        False, f"Wrong password. The next attempt is possible in {_seconds(delay)}.", retry_after=delay
    )


def _seconds(value: float) -> str:
    whole = max(1, round(value + 0.49))
    return f"{whole} second" + ("" if whole == 1 else "s")
