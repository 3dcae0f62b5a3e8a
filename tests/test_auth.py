"""cxr_core.auth: where the admin password comes from, constant-time comparison, the growing delay."""

import hmac

import pytest

from cxr_core import auth


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture(autouse=True)
def no_ambient_password(monkeypatch, tmp_path):
    """Tests must not see a developer's real secrets file or environment."""
    monkeypatch.delenv(auth.ENV_PASSWORD, raising=False)
    monkeypatch.setenv(auth.ENV_SECRETS_FILE, str(tmp_path / "absent-secrets.toml"))
    auth.reset_throttle()
    yield
    auth.reset_throttle()


def test_no_password_configured_keeps_admin_locked():
    assert auth.configured_password() is None
    result = auth.check_password("anything")
    assert not result.ok
    assert auth.ENV_PASSWORD in result.message


def test_environment_variable_wins_over_secrets_file(monkeypatch, tmp_path):
    secrets = tmp_path / "secrets.toml"
    secrets.write_text('admin_password = "from-file"\n')
    monkeypatch.setenv(auth.ENV_SECRETS_FILE, str(secrets))
    assert auth.configured_password() == "from-file"
    monkeypatch.setenv(auth.ENV_PASSWORD, "from-env")
    assert auth.configured_password() == "from-env"


@pytest.mark.parametrize(
    "content, expected",
    [
        ('admin_password = "top-level"\n', "top-level"),
        ('[admin]\npassword = "in-a-table"\n', "in-a-table"),
        ('admin_password = ""\n', None),
        ("admin_password = 1234\n", None),
        ("this is [not toml", None),
    ],
)
def test_secrets_file_layouts(tmp_path, content, expected):
    secrets = tmp_path / "secrets.toml"
    secrets.write_text(content)
    assert auth.configured_password(secrets) == expected


def test_right_password_unlocks_and_uses_constant_time_compare(monkeypatch):
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    throttle = auth.Throttle(FakeClock())
    assert auth.check_password("correct horse", "correct horse", throttle=throttle).ok
    assert calls == [(b"correct horse", b"correct horse")]


def test_wrong_password_is_refused_and_delay_grows():
    clock = FakeClock()
    throttle = auth.Throttle(clock)
    delays = []
    for _ in range(8):
        result = auth.check_password("guess", "secret", throttle=throttle)
        assert not result.ok and "Wrong password" in result.message
        delays.append(result.retry_after)
        clock.now += result.retry_after  # wait exactly as long as asked
    assert delays[:4] == [1, 2, 4, 8]
    assert delays == sorted(delays)
    assert max(delays) <= auth.MAX_DELAY_S


def test_attempts_during_the_delay_are_refused_even_with_the_right_password():
    clock = FakeClock()
    throttle = auth.Throttle(clock)
    auth.check_password("guess", "secret", throttle=throttle)
    early = auth.check_password("secret", "secret", throttle=throttle)
    assert not early.ok and "Try again" in early.message
    clock.now += 1.01
    assert auth.check_password("secret", "secret", throttle=throttle).ok
    assert throttle.failures == 0


def test_empty_password_is_not_counted_as_a_guess():
    throttle = auth.Throttle(FakeClock())
    result = auth.check_password("", "secret", throttle=throttle)
    assert not result.ok and throttle.failures == 0


def test_non_ascii_passwords_compare_correctly():
    throttle = auth.Throttle(FakeClock())
    assert auth.check_password("pässwörd✓", "pässwörd✓", throttle=throttle).ok
    assert not auth.check_password("passwort", "pässwörd✓", throttle=throttle).ok


def test_auth_module_does_not_import_streamlit():
    import subprocess
    import sys

    code = (
        "import sys, cxr_core.auth, ui.screening_view, ui.evaluation_view, ui.versions_view, ui.retrain_view; "
        "print('streamlit' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_one_attacker_cannot_lock_the_administrator_out(caplog):
    book = auth.ThrottleBook(FakeClock())
    attacker = ("session:evil", "address:203.0.113.9")
    for _ in range(5):
        assert not auth.check_password("guess", "s3cret", client=attacker, book=book).ok
    refused = auth.check_password("s3cret", "s3cret", client=attacker, book=book)
    assert not refused.ok and refused.retry_after > 0  # the attacker waits, even with the right password
    admin = ("session:admin", "address:198.51.100.7")
    assert auth.check_password("s3cret", "s3cret", client=admin, book=book).ok
    assert "guess" not in caplog.text and "s3cret" not in caplog.text
    assert "session:evil" in caplog.text  # attempts are logged by client


def test_new_sessions_from_the_same_address_do_not_reset_the_delay():
    clock = FakeClock()
    book = auth.ThrottleBook(clock)
    first = auth.check_password("guess", "s3cret", client=("session:a", "address:10.9.9.9"), book=book)
    again = auth.check_password("s3cret", "s3cret", client=("session:b", "address:10.9.9.9"), book=book)
    assert not first.ok and not again.ok and "Too many wrong passwords" in again.message
    clock.now += first.retry_after + 0.01
    assert auth.check_password("s3cret", "s3cret", client=("session:b", "address:10.9.9.9"), book=book).ok


def test_the_throttle_book_stays_bounded():
    book = auth.ThrottleBook(FakeClock(), max_clients=3)
    for i in range(10):
        book.throttles((f"session:{i}",))
    assert len(book._book) == 3
