"""`classguard guardrails` / `drift-report` take only http(s) URLs and turn a service that cannot be
reached into a one-line error (exit 2), never a traceback."""

from __future__ import annotations

import http.server
import socket
import threading

import pytest

from ops.cli import main
from ops.common import admin_call


@pytest.fixture(autouse=True)
def token(monkeypatch):
    monkeypatch.setenv("CLASSGUARD_ADMIN_TOKEN", "test-token")


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_line_error(capsys, command: str) -> str:
    out, err = capsys.readouterr()
    assert out == ""
    assert "Traceback" not in err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith(f"classguard {command}: error: "), err
    return err


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://x", "http://", "localhost:3000", "http://127.0.0.1:3000\nX: y"])
def test_non_http_urls_are_refused(url, capsys):
    """A --url that is not a plain http(s)://host URL (file, FTP, no host, no scheme, a newline) is refused."""
    assert main(["guardrails", "show", "--url", url]) == 2
    err = one_line_error(capsys, "guardrails")
    assert repr(url) in err and "root:" not in err


def test_drift_report_refuses_a_file_url(tmp_path, capsys):
    """`drift-report --url file:///etc/passwd` exits 2 with one line and writes no output file."""
    out = tmp_path / "report.json"
    assert main(["drift-report", "--url", "file:///etc/passwd", "-o", str(out)]) == 2
    assert "http:// or https://" in one_line_error(capsys, "drift-report")
    assert not out.exists()


@pytest.mark.parametrize("command", [["guardrails", "show"], ["drift-report"]])
def test_refused_port_is_a_one_line_error(command, capsys):
    """A URL whose port refuses connections exits 2 with one stderr line naming the URL."""
    url = f"http://127.0.0.1:{free_port()}"
    assert main([*command, "--url", url]) == 2
    err = one_line_error(capsys, command[0])
    assert f"cannot reach {url}/admin/" in err and "refused" in err.lower()


def test_a_silent_service_times_out_with_a_message():
    """A service that accepts the connection but never answers is a RuntimeError naming the URL."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(RuntimeError, match=rf"^cannot reach {url}/admin/guardrails: no answer within 0.5 s$"):
            admin_call(url, "guardrails", timeout=0.5)


def test_redirects_are_not_followed(capsys):
    """A redirect is a one-line error naming the target, and the bearer token is not sent there."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(f"{self.path} {self.headers.get('Authorization')}")
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{self.server.server_port}/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler) as httpd:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        try:
            assert main(["guardrails", "show", "--url", f"http://127.0.0.1:{httpd.server_port}"]) == 2
        finally:
            httpd.shutdown()
    err = one_line_error(capsys, "guardrails")
    assert "redirected (302)" in err and "/elsewhere" in err
    assert seen == ["/admin/guardrails Bearer test-token"]
