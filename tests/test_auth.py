"""cxr_core.auth: named admin accounts (argon2 hashes), refused placeholders, per-client and global throttling,
the client address behind a trusted proxy, failed logins in the audit trail, idle expiry."""

import subprocess
import sys

import pytest
from gatekeeping import PASSWORD

from cxr_core import auth
from cxr_core.errors import CxrError
from cxr_core.registry import audit


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture(autouse=True)
def private_accounts(monkeypatch, tmp_path):
    """Tests must not see a developer's real secrets, accounts or audit trail."""
    monkeypatch.delenv(auth.ENV_PASSWORD, raising=False)
    monkeypatch.delenv(auth.ENV_PROXY_HEADER, raising=False)
    monkeypatch.delenv(auth.ENV_TRUSTED_PROXIES, raising=False)
    monkeypatch.setenv(auth.ENV_SECRETS_FILE, str(tmp_path / "absent-secrets.toml"))
    monkeypatch.setenv(auth.ENV_USERS_FILE, str(tmp_path / "admin_users.toml"))
    monkeypatch.setenv("CXR_MODELS_DIR", str(tmp_path / "models"))
    auth.reset_throttle()
    yield
    auth.reset_throttle()


def book(clock=None, limit=1000, window_s=900.0):
    clock = clock or FakeClock()
    return auth.ThrottleBook(clock, budget=auth.FailureBudget(clock, limit=limit, window_s=window_s))


def test_no_account_keeps_admin_locked():
    assert auth.configured_users() == {}
    result = auth.check_login("alice", "anything at all")
    assert not result.ok and "users add" in result.message


def test_accounts_are_argon2_hashes_and_log_in_by_name(tmp_path):
    path = auth.add_user("alice", PASSWORD)
    text = path.read_text()
    assert PASSWORD not in text and "$argon2id$" in text  # no plain password is stored
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    result = auth.check_login("alice", PASSWORD, book=book())
    assert result.ok and result.user == "alice"
    assert not auth.check_login("bob", PASSWORD, book=book()).ok  # another name, same password: refused
    entries = audit.read(tmp_path / "models")
    assert [e["action"] for e in entries] == ["login_failed", "login", "user_added"]
    assert entries[1]["actor"] == "dashboard:alice"  # the trail names the person
    assert entries[0]["user"] == "bob" and PASSWORD not in str(entries)


@pytest.mark.parametrize(
    "password, words",
    [("short-one", "too short"), ("change-me-dashboard-admin-password", "placeholder"),
     ("CHANGE-ME-please-really", "placeholder"), ("alice.example", "user name")],
)  # fmt: skip
def test_short_and_placeholder_passwords_are_refused(password, words):
    name = "alice.example" if words == "user name" else "alice"
    with pytest.raises(CxrError, match=words):
        auth.add_user(name, password)
    assert auth.configured_users() == {}


def test_a_shared_password_or_a_placeholder_account_is_refused_at_start_up(monkeypatch, tmp_path):
    monkeypatch.setenv(auth.ENV_PASSWORD, "change-me-dashboard-admin-password")  # .env.example as shipped
    problems = auth.startup_problems()
    assert len(problems) == 1 and "no longer accepted" in problems[0] and "users add" in problems[0]
    assert not auth.check_login("admin", "change-me-dashboard-admin-password").ok

    monkeypatch.delenv(auth.ENV_PASSWORD)
    hashed = auth.hash_password("change-me-to-a-long-passphrase")  # secrets.toml.example's value, hashed
    (tmp_path / "admin_users.toml").write_text(f'[users]\nbob = "{hashed}"\n')
    problems = auth.startup_problems()
    assert len(problems) == 1 and "bob" in problems[0] and "placeholder" in problems[0]
    assert auth.usable_users() == {}
    assert not auth.check_login("bob", "change-me-to-a-long-passphrase").ok


def test_the_cli_adds_a_user_from_standard_input(tmp_path):
    users = tmp_path / "cli-users.toml"
    env = {"CXR_USERS_FILE": str(users), "CXR_MODELS_DIR": str(tmp_path / "models"), "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        [sys.executable, "-m", "cxr_core", "users", "add", "carol", "--password-stdin"],
        input=PASSWORD + "\n", capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    short = subprocess.run(
        [sys.executable, "-m", "cxr_core", "users", "add", "dave", "--password-stdin"],
        input="abc\n", capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert short.returncode == 2 and "too short" in short.stderr
    assert "carol" in users.read_text() and "dave" not in users.read_text()
    listed = subprocess.run([sys.executable, "-m", "cxr_core", "users", "list"], capture_output=True, text=True,
                            env=env)  # fmt: skip
    assert listed.stdout.split() == ["carol"]


def test_wrong_password_is_refused_audited_and_the_delay_grows(tmp_path):
    auth.add_user("alice", PASSWORD)
    clock = FakeClock()
    throttles = book(clock)
    delays = []
    for _ in range(8):
        result = auth.check_login("alice", "guess-guess-guess", client=("address:10.0.0.1",), book=throttles)
        assert not result.ok and "Wrong user name or password" in result.message
        delays.append(result.retry_after)
        clock.now += result.retry_after  # wait exactly as long as asked
    assert delays[:4] == [1, 2, 4, 8] and delays == sorted(delays) and max(delays) <= auth.MAX_DELAY_S
    failed = [e for e in audit.read(tmp_path / "models") if e["action"] == "login_failed"]
    assert len(failed) == 8 and all(e["client"] == "address:10.0.0.1" for e in failed)
    assert audit.verify(tmp_path / "models").ok


def test_one_attacker_cannot_lock_the_administrator_out():
    auth.add_user("alice", PASSWORD)
    throttles = book()
    attacker = ("session:evil", "address:203.0.113.9")
    for _ in range(5):
        assert not auth.check_login("alice", "guess-guess-guess", client=attacker, book=throttles).ok
    refused = auth.check_login("alice", PASSWORD, client=attacker, book=throttles)
    assert not refused.ok and refused.retry_after > 0  # the attacker waits, even with the right password
    admin = ("session:admin", "address:198.51.100.7")
    assert auth.check_login("alice", PASSWORD, client=admin, book=throttles).ok


def test_new_sessions_without_an_address_are_stopped_by_the_global_budget():
    """From a local proxy Streamlit sees no address: each new session was a fresh, unthrottled guesser."""
    auth.add_user("alice", PASSWORD)
    clock = FakeClock()
    throttles = book(clock, limit=5, window_s=600)
    for n in range(5):  # five sessions, five guesses, no address
        result = auth.check_login("alice", f"guess-{n}-guess-guess", client=(f"session:{n}",), book=throttles)
        assert not result.ok and "Wrong user name" in result.message
    sixth = auth.check_login("alice", PASSWORD, client=("session:new",), book=throttles)
    assert not sixth.ok and "Too many failed logins on this server" in sixth.message
    assert sixth.retry_after == pytest.approx(600)
    clock.now += 601  # the window slides: the administrator gets in again
    assert auth.check_login("alice", PASSWORD, client=("session:new",), book=throttles).ok


def test_the_client_address_comes_from_the_trusted_proxy_header(monkeypatch):
    headers = {"X-Forwarded-For": "198.51.100.7, 10.1.2.3", "Host": "screening.example"}
    assert auth.client_address(None, headers) is None  # no header configured: the unknown peer stays unknown
    monkeypatch.setenv(auth.ENV_PROXY_HEADER, "X-Forwarded-For")
    assert auth.client_address(None, headers) == "10.1.2.3"  # right-most: what the proxy itself appended
    assert auth.client_address("127.0.0.1", headers) == "10.1.2.3"
    # a client that reaches the dashboard directly cannot claim an address by sending the header
    assert auth.client_address("203.0.113.9", headers) == "203.0.113.9"
    monkeypatch.setenv(auth.ENV_TRUSTED_PROXIES, "192.0.2.10")
    assert auth.client_address("192.0.2.10", {"x-forwarded-for": "198.51.100.99"}) == "198.51.100.99"


def test_behind_a_proxy_one_wrong_guess_no_longer_locks_everyone_out(monkeypatch):
    """Behind a remote proxy everyone shared the proxy's address, so one guesser slowed every login."""
    auth.add_user("alice", PASSWORD)
    monkeypatch.setenv(auth.ENV_PROXY_HEADER, "X-Forwarded-For")
    monkeypatch.setenv(auth.ENV_TRUSTED_PROXIES, "192.0.2.10")
    throttles = book()
    guesser = auth.client_address("192.0.2.10", {"X-Forwarded-For": "203.0.113.9"})
    admin = auth.client_address("192.0.2.10", {"X-Forwarded-For": "198.51.100.7"})
    assert not auth.check_login("alice", "wrong-wrong-wrong", client=(f"address:{guesser}",), book=throttles).ok
    assert auth.check_login("alice", PASSWORD, client=(f"address:{admin}",), book=throttles).ok


def test_sessions_expire_after_the_configured_idle_time(monkeypatch):
    monkeypatch.setenv(auth.ENV_IDLE_MINUTES, "10")
    assert auth.idle_timeout_s() == 600
    assert not auth.session_expired(1000.0, 1599.0)
    assert auth.session_expired(1000.0, 1601.0)
    assert auth.session_expired(None, 1000.0)  # never seen: locked


def test_auth_module_does_not_import_streamlit():
    code = (
        "import sys, cxr_core.auth, ui.screening_view, ui.evaluation_view, ui.versions_view, ui.retrain_view; "
        "print('streamlit' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_throttle_book_stays_bounded():
    throttles = auth.ThrottleBook(FakeClock(), max_clients=3)
    for i in range(10):
        throttles.throttles((f"session:{i}",))
    assert len(throttles._book) == 3
