"""What a client sends outside a request's body, over raw sockets against a real `bentoml serve`:
chunk trailers and chunk extensions are held to the head limit (431, JSON, counted, memory
flat), and a pipelined request is held to it too without losing the answers before it."""

import io
import json
import socket
import time
from pathlib import Path
from typing import Iterable

import numpy as np
import pytest
from PIL import Image

from harness import promtext
from harness.server import Server, descendants
from harness.traffic import holdout_samples

pytestmark = pytest.mark.integration
HEAD_LIMIT = 32_768  # limits.max_header_bytes, the default
MB = 1_000_000


@pytest.fixture(scope="module")
def live(model_home, tmp_path_factory):
    env = {"BENTOML_HOME": str(model_home), "CLASSGUARD_LIMITS__HEADER_TIMEOUT_SECONDS": "5"}
    with Server(env=env, log_path=tmp_path_factory.mktemp("http-limits") / "serve.log") as server:
        yield server


@pytest.fixture(scope="module")
def png():
    return holdout_samples()[0].png


def multipart(image: bytes) -> bytes:
    return (b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"d.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n" + image + b"\r\n--b--\r\n")


def classify(image: bytes, last: bool = False) -> bytes:
    """A /classify request; `last` closes the connection after its answer (no keep-alive wait)."""
    body = multipart(image)
    return (b"POST /classify HTTP/1.1\r\nHost: a\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            + b"Connection: close\r\n" * last + b"Content-Length: %d\r\n\r\n" % len(body)) + body


def chunked_head(last: bool = False) -> bytes:
    return (b"POST /classify HTTP/1.1\r\nHost: a\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            + b"Connection: close\r\n" * last + b"Transfer-Encoding: chunked\r\n\r\n")


def chunks(body: bytes, size: int) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size]) for i in range(0, len(body), size))


def trailer_flood(total: int, line: int = 1_000) -> Iterable[bytes]:
    """`total` bytes of `X-T: aaa...` trailer lines, a megabyte at a time, then the blank line."""
    block = (b"X-T: " + b"a" * (line - 7) + b"\r\n") * (MB // line)
    for _ in range(total // len(block)):
        yield block
    yield b"\r\n"


def exchange(url: str, parts: Iterable[bytes], wait: float = 20.0) -> bytes:
    """Send `parts` on one connection (stopping when the server closes it), then everything the
    server sent until it closed."""
    host, port = url.removeprefix("http://").split(":")
    out = b""
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        try:
            for part in parts:
                sock.sendall(part)
        except OSError:  # refused and closed while the client was still sending
            pass
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except OSError:
            pass
    return out


def responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The HTTP/1.1 responses in `raw`, in order: (status, headers, body); each has a content-length."""
    found = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers["content-length"])
        found.append((int(lines[0].split()[1]), headers, rest[:length]))
        raw = rest[length:]
    return found


def worker_rss_bytes(server: Server) -> int:
    """Resident memory of every process below `bentoml serve` (its workers), summed."""
    total = 0
    for pid in descendants(server.process.pid):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total


def refused_count(url: str) -> float:
    return promtext.total(promtext.scrape(url), "classguard_rejected_requests_total",
                          endpoint="http", reason="headers_too_large")


def assert_refused(response: tuple[int, dict[str, str], bytes], words: str) -> None:
    status, headers, body = response
    detail = json.loads(body)
    assert status == 431 and headers["connection"] == "close", response
    assert detail["error"] == "headers_too_large" and words in detail["detail"], detail


def test_trailers_past_the_head_limit_are_431_and_memory_stays_flat(live, png):
    """64 MB of trailers after a valid chunked /classify is a 431 naming the trailers, counted, and
    the workers' resident memory grows by less than 16 MB."""
    assert exchange(live.url, [classify(png, last=True)]).startswith(b"HTTP/1.1 200")  # warm, before measuring
    counted, rss = refused_count(live.url), worker_rss_bytes(live)
    raw = exchange(live.url, [chunked_head(), chunks(multipart(png), 4096), b"0\r\n", *trailer_flood(64 * MB)])
    grown = worker_rss_bytes(live) - rss
    assert_refused(responses(raw)[0], "trailers")
    assert refused_count(live.url) == counted + 1
    assert grown < 16 * MB, f"worker RSS grew {grown / MB:.1f} MB"


def test_a_huge_chunk_extension_is_431(live, png):
    """A 50 MB extension on a chunk-size line of a valid chunked /classify is a 431 naming the chunk line."""
    body = multipart(png)
    extension = [b"%x;ext=" % len(body)] + [b"a" * MB] * 50 + [b"\r\n" + body + b"\r\n0\r\n\r\n"]
    raw = exchange(live.url, [chunked_head(), *extension])
    assert_refused(responses(raw)[0], "chunk-size line")


def test_small_trailers_after_many_small_chunks_are_served(live):
    """A 12 KB image sent one byte a chunk (60 KB of chunk framing, past the head limit in total)
    with a small trailer is answered 200: the limit holds per chunk line and per trailer section."""
    noise = np.random.default_rng(7).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    framed = chunks(multipart(buffer.getvalue()), 1)
    assert len(framed) - len(multipart(buffer.getvalue())) > HEAD_LIMIT
    raw = exchange(live.url, [chunked_head(last=True), framed, b"0\r\nX-Checksum: abc\r\n\r\n"], wait=30)
    status, _, body = responses(raw)[0]
    assert status == 200 and json.loads(body)["label"] is not None, body[:200]


@pytest.mark.parametrize("size", [40_000, 200_000])
def test_a_pipelined_oversized_head_gets_431_after_the_answer_before_it(live, png, size):
    """A valid /classify and, in the same write, a request whose head is 40 KB or 200 KB: the
    /classify's 200 (with its answer) comes first, then the 431, then the connection closes."""
    oversized = b"GET /readyz HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * size + b"\r\n\r\n"
    found = responses(exchange(live.url, [classify(png) + oversized]))
    assert [status for status, _, _ in found] == [200, 431], found
    assert json.loads(found[0][2])["label"] is not None
    assert_refused(found[1], "request line and headers")


def test_pipelined_trailer_flood_is_refused_after_the_answer_before_it_and_never_run(live, png):
    """A valid /classify, then a pipelined chunked /classify with 8 MB of trailers: a 200, then a
    431, and only the first is classified."""
    predicted = promtext.total(promtext.scrape(live.url), "classguard_predictions_total")
    second = chunked_head() + chunks(multipart(png), 4096) + b"0\r\n"
    found = responses(exchange(live.url, [classify(png) + second, *trailer_flood(8 * MB)]))
    assert [status for status, _, _ in found] == [200, 431], found
    assert_refused(found[1], "trailers")
    time.sleep(0.5)  # a prediction for the refused request, had one been started, is counted by now
    assert promtext.total(promtext.scrape(live.url), "classguard_predictions_total") == predicted + 1


def test_a_pipelined_malformed_request_gets_400_after_the_answer_before_it(live, png):
    """A valid /classify followed in the same write by a request line the parser refuses: 200, then
    the JSON 400."""
    found = responses(exchange(live.url, [classify(png) + b"FOO / HTTP/1.1\r\nHost: a\r\n\r\n"]))
    assert [status for status, _, _ in found] == [200, 400], found
    assert json.loads(found[1][2])["error"] == "malformed_request"


def test_pipelined_valid_requests_are_answered_in_order(live, png):
    """Three valid requests in one write (two /classify, one /readyz) are answered 200, in order,
    on a connection that stays open."""
    three = classify(png) + classify(png) + b"GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    found = responses(exchange(live.url, [three]))
    assert [status for status, _, _ in found] == [200, 200, 200], found
    assert [("label" in json.loads(body)) for _, _, body in found[:2]] == [True, True]
