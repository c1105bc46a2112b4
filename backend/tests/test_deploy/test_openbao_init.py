"""compose's `openbao-init` retries a call whose request never left (a failed DNS lookup on the
container network, a refused connection), and never repeats one that may have been sent."""

from __future__ import annotations

import runpy
import socket
import threading
import urllib.error
from typing import Any

import certifi
import pytest

from app.core.config import BACKEND_DIR

SCRIPT = BACKEND_DIR / "selfhost" / "openbao_init.py"


def _load(monkeypatch: pytest.MonkeyPatch, address: str) -> dict[str, Any]:
    monkeypatch.setenv("OPENBAO_ADDR", address)
    monkeypatch.setenv("OPENBAO_CA_CERT", certifi.where())
    monkeypatch.setenv("OPENBAO_TOKEN", "s.test")
    return runpy.run_path(str(SCRIPT))  # defines; main() runs only as __main__


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    "address", ["https://no-such-host.invalid:8200", "https://127.0.0.1:{port}"]
)
def test_a_call_whose_request_never_left_is_retried_until_its_deadline(
    monkeypatch: pytest.MonkeyPatch, address: str
) -> None:
    script = _load(monkeypatch, address.format(port=_closed_port()))
    attempts: list[float] = []
    clock = iter(range(0, 1000, 20))  # each attempt 20 s later: the deadline (60 s) ends it
    monkeypatch.setattr(script["time"], "monotonic", lambda: float(next(clock)))
    monkeypatch.setattr(script["time"], "sleep", attempts.append)
    with pytest.raises(urllib.error.URLError):
        script["call"]("GET", "sys/seal-status")
    assert len(attempts) == 3  # at 20, 40 and 60 s; the attempt at 80 s gives up


def test_a_request_that_may_have_been_sent_is_not_repeated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A connection accepted, then dropped: past a connect, the script cannot tell whether a
    # request arrived, so it does not send it again.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        script = _load(monkeypatch, f"https://127.0.0.1:{port}")
        sleeps: list[float] = []
        monkeypatch.setattr(script["time"], "sleep", sleeps.append)

        def hang_up() -> None:
            connection, _ = server.accept()
            connection.close()

        threading.Thread(target=hang_up, daemon=True).start()
        # The client sees the hang-up as an EOF, or as a reset when its TLS hello was unread
        # at the close (CI saw both): either way the call may have been sent.
        with pytest.raises(urllib.error.URLError, match=r"EOF|reset by peer"):
            script["call"]("PUT", "sys/init", {"secret_shares": 1})
    assert sleeps == []
