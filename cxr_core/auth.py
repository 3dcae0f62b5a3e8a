"""Named admin accounts that guard every write changing what the product decides.

Screening and evaluation are open to every clinician; changing which model serves patients, the
operating point, or the labels a site validates and retrains on is not. Each administrator has an
account: a user name and an argon2id hash (argon2-cffi) kept in a small TOML file beside the
dashboard's secrets (``.streamlit/admin_users.toml``, moved by ``CXR_USERS_FILE``, e.g. to a mounted
Docker secret), written by ``python -m cxr_core users add NAME``. So the audit trail names a person,
not a browser session, and no plain password is stored anywhere. The core never imports streamlit.

The old single shared password (``CXR_ADMIN_PASSWORD`` or ``admin_password`` in secrets.toml) is
refused with a message at start-up, as is an account whose password is one of the example files'
placeholders; ``users add`` refuses short and placeholder passwords before hashing them.

Guessing is slowed twice: each client (its address, taken from a configured trusted proxy header when
the dashboard sits behind one, and its browser session) waits 1 s, 2 s, 4 s ... up to a minute after
each wrong try, and the whole server allows at most ``CXR_LOGIN_FAILURE_BUDGET`` failures per
``CXR_LOGIN_FAILURE_WINDOW_S`` seconds, whoever makes them (new sessions or rotating addresses do not
help a guesser). Every failed and every successful login is written to the audit trail.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import tomllib
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cxr_core.errors import CxrError
from cxr_core.settings import PROJECT_ROOT

ENV_PASSWORD = "CXR_ADMIN_PASSWORD"  # the retired shared password: refused when set
ENV_SECRETS_FILE = "CXR_SECRETS_FILE"
ENV_USERS_FILE = "CXR_USERS_FILE"
ENV_IDLE_MINUTES = "CXR_ADMIN_IDLE_MINUTES"
ENV_PROXY_HEADER = "CXR_TRUSTED_PROXY_HEADER"
ENV_TRUSTED_PROXIES = "CXR_TRUSTED_PROXIES"
ENV_FAILURE_BUDGET = "CXR_LOGIN_FAILURE_BUDGET"
ENV_FAILURE_WINDOW = "CXR_LOGIN_FAILURE_WINDOW_S"
DEFAULT_SECRETS_FILE = PROJECT_ROOT / ".streamlit" / "secrets.toml"
DEFAULT_USERS_FILE = PROJECT_ROOT / ".streamlit" / "admin_users.toml"

FIRST_DELAY_S = 1.0
MAX_DELAY_S = 60.0
MIN_PASSWORD_LENGTH = 12
DEFAULT_IDLE_MINUTES = 15.0
DEFAULT_FAILURE_BUDGET = 20
DEFAULT_FAILURE_WINDOW_S = 900.0
# The example values shipped in .env.example and secrets.toml.example, and the obvious ones.
PLACEHOLDERS = (
    "change-me-dashboard-admin-password", "change-me-to-a-long-passphrase", "change-me", "changeme",
    "password", "password123", "admin", "administrator", "correct horse battery staple",
)  # fmt: skip
_USER_NAME = re.compile(r"^[a-z][a-z0-9._-]{1,31}$")

_LOG = logging.getLogger("cxr_core.auth")


# ------------------------------------------------------------------------------------------- accounts


def secrets_file() -> Path:
    """The dashboard's secrets.toml (``CXR_SECRETS_FILE`` moves it)."""
    return Path(os.environ.get(ENV_SECRETS_FILE) or DEFAULT_SECRETS_FILE)


def users_file() -> Path:
    """The accounts file ``users add`` writes (``CXR_USERS_FILE`` moves it)."""
    return Path(os.environ.get(ENV_USERS_FILE) or DEFAULT_USERS_FILE)


def _load_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as error:
        _LOG.error("cannot read %s: %s", path, error)
        return {}


def configured_users() -> dict[str, str]:
    """User name -> argon2 hash, from the accounts file and an ``[admin_users]`` table in secrets.toml."""
    users: dict[str, str] = {}
    for table in (_load_toml(secrets_file()).get("admin_users"), _load_toml(users_file()).get("users")):
        if isinstance(table, dict):
            users.update(
                {name: value for name, value in table.items() if _USER_NAME.match(name) and isinstance(value, str)}
            )
    return users


def password_problem(password: str, name: str = "") -> str | None:
    """Why a password may not be used, in words for the operator, or None."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"the password is too short ({len(password)} characters; at least {MIN_PASSWORD_LENGTH})"
    lowered = password.strip().lower()
    if lowered in PLACEHOLDERS or lowered.startswith("change-me") or "changeme" in lowered:
        return "the password is a placeholder from the example files; choose your own"
    if name and lowered == name.lower():
        return "the password is the user name"
    return None


def _hasher():
    from argon2 import PasswordHasher

    return PasswordHasher()


def hash_password(password: str) -> str:
    return _hasher().hash(password)


def _verify_hash(stored: str, password: str) -> bool:
    from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

    try:
        return _hasher().verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def _write_users(users: dict[str, str]) -> Path:
    from cxr_core.fsutil import write_text_atomic

    lines = [
        "# Admin accounts of the TB screening dashboard: user name = argon2id hash.",
        "# Written by `python -m cxr_core users add NAME`; no plain password is stored here.",
        "[users]",
    ]
    lines += [f'{name} = "{value}"' for name, value in sorted(users.items())]
    path = users_file()
    write_text_atomic(path, "\n".join(lines) + "\n")
    os.chmod(path, 0o600)
    return path


def _own_users() -> dict[str, str]:
    table = _load_toml(users_file()).get("users")
    return dict(table) if isinstance(table, dict) else {}


def add_user(name: str, password: str, *, replace: bool = False, actor: str | None = None) -> Path:
    """Create (or with ``replace`` change the password of) an admin account; returns the file written."""
    from cxr_core.registry import audit

    if not _USER_NAME.match(name or ""):
        raise CxrError(
            f"{name!r} is not a valid user name: 2-32 characters, lower-case letters, digits, '.', '_', '-', "
            "starting with a letter"
        )
    problem = password_problem(password, name)
    if problem:
        raise CxrError(f"{problem}; nothing was changed")
    users = _own_users()
    if name in users and not replace:
        raise CxrError(f"user {name} exists already; use --replace to change the password")
    users[name] = hash_password(password)
    path = _write_users(users)
    audit.record("user_added", actor=actor, user=name, outcome="replaced" if replace else "ok")
    return path


def remove_user(name: str) -> None:
    users = _own_users()
    if name not in users:
        raise CxrError(f"there is no user {name} in {users_file()}")
    del users[name]
    _write_users(users)


@lru_cache(maxsize=256)
def _hash_is_placeholder(stored: str) -> bool:
    """Whether an account's hash matches one of the known placeholders (checked once per hash)."""
    return any(_verify_hash(stored, placeholder) for placeholder in PLACEHOLDERS[:3])


def startup_problems() -> list[str]:
    """What refuses the admin actions at start-up, each as a sentence for the operator's screen."""
    problems = []
    legacy = os.environ.get(ENV_PASSWORD)
    secrets = _load_toml(secrets_file())
    if legacy or secrets.get("admin_password") or isinstance(secrets.get("admin"), dict):
        problems.append(
            f"A shared admin password ({ENV_PASSWORD} or admin_password in secrets.toml) is no longer "
            "accepted: every administrator needs a named account. Remove it and add accounts with "
            "`python -m cxr_core users add NAME`."
        )
    for name, stored in configured_users().items():
        if _hash_is_placeholder(stored):
            problems.append(
                f"The password of admin user {name} is a placeholder from the example files; set a new one "
                f"with `python -m cxr_core users add {name} --replace`. That account stays locked until then."
            )
    return problems


def usable_users() -> dict[str, str]:
    """Accounts that may log in: those whose password is not a known placeholder."""
    return {name: stored for name, stored in configured_users().items() if not _hash_is_placeholder(stored)}


def how_to_configure() -> str:
    """What an operator must do to enable the admin actions, for the screen."""
    return (
        "No admin account is configured. On the server run `python -m cxr_core users add NAME` (it writes "
        f"{DEFAULT_USERS_FILE.relative_to(PROJECT_ROOT)}, or the file {ENV_USERS_FILE} names), then reload "
        "this page."
    )


# --------------------------------------------------------------------------------- who is asking


def client_address(peer: str | None, headers: Mapping[str, str] | None) -> str | None:
    """The client's address: the trusted proxy's header when configured, else the connection's peer.

    A proxy on the same host connects from loopback, where Streamlit reports no address at all, so
    without the header every client looks alike. The header is believed only when the connection comes
    from a trusted proxy (``CXR_TRUSTED_PROXIES``, default loopback, which Streamlit reports as None);
    for ``X-Forwarded-For`` the right-most entry is taken, the one the proxy itself appended.
    """
    header = (os.environ.get(ENV_PROXY_HEADER) or "").strip()
    trusted = {p.strip() for p in os.environ.get(ENV_TRUSTED_PROXIES, "127.0.0.1,::1").split(",") if p.strip()}
    if header and (peer is None or peer in trusted):
        lowered = {str(k).lower(): v for k, v in (headers or {}).items()}
        value = lowered.get(header.lower())
        if isinstance(value, str) and value.strip():
            return value.split(",")[-1].strip()
    return peer or None


def idle_timeout_s() -> float:
    """How long an unlocked admin session may sit unused before it locks itself (``CXR_ADMIN_IDLE_MINUTES``)."""
    try:
        minutes = float(os.environ.get(ENV_IDLE_MINUTES) or DEFAULT_IDLE_MINUTES)
    except ValueError:
        minutes = DEFAULT_IDLE_MINUTES
    return max(1.0, minutes * 60.0)


def session_expired(last_seen: float | None, now: float, timeout_s: float | None = None) -> bool:
    return last_seen is None or now - last_seen > (timeout_s if timeout_s is not None else idle_timeout_s())


# ------------------------------------------------------------------------------------------ throttling


@dataclass
class AuthResult:
    ok: bool
    message: str
    retry_after: float = 0.0
    user: str | None = None


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


class FailureBudget:
    """The server-wide allowance of failed logins in a sliding window, whoever makes them.

    Per-client delays cannot stop a guesser who opens new sessions from an address the server cannot
    see (a local proxy without the trusted header) or who rotates addresses; this budget can. When it
    is spent, every login waits until the oldest failure leaves the window: the price is that the real
    administrator waits too during an attack, which the audit trail then shows.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, limit: int | None = None,
                 window_s: float | None = None):  # fmt: skip
        self._clock = clock
        self._lock = threading.Lock()
        self.limit = limit if limit is not None else int(os.environ.get(ENV_FAILURE_BUDGET) or DEFAULT_FAILURE_BUDGET)
        self.window_s = (
            window_s if window_s is not None else float(os.environ.get(ENV_FAILURE_WINDOW) or DEFAULT_FAILURE_WINDOW_S)
        )
        self._failures: deque[float] = deque()

    def _expire(self, now: float) -> None:
        while self._failures and now - self._failures[0] >= self.window_s:
            self._failures.popleft()

    def wait_seconds(self) -> float:
        with self._lock:
            now = self._clock()
            self._expire(now)
            if len(self._failures) < self.limit:
                return 0.0
            return max(0.0, self._failures[0] + self.window_s - now)

    def fail(self) -> None:
        with self._lock:
            now = self._clock()
            self._expire(now)
            self._failures.append(now)


class ThrottleBook:
    """One :class:`Throttle` per client key (a browser session, a client address) and the global budget.

    Keyed per client, a guesser slows only himself: his session and his address wait, the
    administrator's do not. Keys are kept for the most recent ``max_clients`` only, so memory stays
    bounded.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_clients: int = 10_000,
                 budget: FailureBudget | None = None):  # fmt: skip
        self._clock = clock
        self._lock = threading.Lock()
        self._max = max_clients
        self._book: OrderedDict[str, Throttle] = OrderedDict()
        self.budget = budget or FailureBudget(clock)

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
        self.budget = FailureBudget(self._clock)


_BOOK = ThrottleBook()
# A valid argon2 hash of a random string: unknown user names cost the same time as known ones.
_DUMMY = None


def reset_throttle() -> None:
    """Forget failed attempts (tests; an operator restarting the dashboard does the same)."""
    _BOOK.clear()


def _audit_login(action: str, user: str, client: tuple[str, ...], outcome: str) -> None:
    from cxr_core.registry import audit

    try:
        audit.record(action, actor=f"dashboard:{user or '?'}", user=user, client=",".join(client), outcome=outcome)
    except OSError as error:  # a read-only registry must not turn a login into a crash
        _LOG.error("cannot write the login to the audit trail: %s", error)


def check_login(
    user: str | None,
    password: str | None,
    *,
    client: tuple[str, ...] = ("local",),
    book: ThrottleBook | None = None,
    users: dict[str, str] | None = None,
) -> AuthResult:
    """Check a user name and password against the accounts, under the per-client delay and global budget.

    ``client`` names the caller by every key it should be throttled under (``session:...``,
    ``address:...``); the longest wait among them, and the global budget's, applies. Attempts are
    logged and audited by user name and client, never with the password.
    """
    global _DUMMY
    book = book or _BOOK
    accounts = usable_users() if users is None else users
    if not accounts:
        return AuthResult(False, how_to_configure())
    throttles = book.throttles(client)
    wait = max([item.wait_seconds() for item in throttles] + [0.0])
    if wait > 0:
        _LOG.warning("admin login refused while throttled: client %s", ", ".join(client))
        return AuthResult(False, f"Too many wrong passwords. Try again in {_seconds(wait)}.", retry_after=wait)
    global_wait = book.budget.wait_seconds()
    if global_wait > 0:
        _LOG.warning("admin login refused: the server's failure budget is spent (client %s)", ", ".join(client))
        return AuthResult(
            False,
            f"Too many failed logins on this server recently. Try again in {_seconds(global_wait)}.",
            retry_after=global_wait,
        )
    user = (user or "").strip().lower()
    if not user or not password:
        return AuthResult(False, "Enter your admin user name and password.")
    stored = accounts.get(user)
    if stored is None:
        if _DUMMY is None:
            _DUMMY = hash_password(os.urandom(16).hex())
        _verify_hash(_DUMMY, password)
        ok = False
    else:
        ok = _verify_hash(stored, password)
    if ok:
        for item in throttles:
            item.succeed()
        _LOG.info("admin %s logged in: client %s", user, ", ".join(client))
        _audit_login("login", user, client, "ok")
        return AuthResult(True, f"Admin actions unlocked for {user}.", user=user)
    delay = max([item.fail() for item in throttles] + [FIRST_DELAY_S])
    book.budget.fail()
    _LOG.warning("failed admin login for %r: client %s", user, ", ".join(client))
    _audit_login("login_failed", user, client, "wrong user name or password")
    return AuthResult(
        False, f"Wrong user name or password. The next attempt is possible in {_seconds(delay)}.", retry_after=delay
    )


def _seconds(value: float) -> str:
    whole = max(1, round(value + 0.49))
    return f"{whole} second" + ("" if whole == 1 else "s")
