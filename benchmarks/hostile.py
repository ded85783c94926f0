"""What hostile clients cost the service: /metrics after many unknown URLs, /classify while
large log pages are read, and /classify while a huge header arrives.

    python -m benchmarks.hostile                 (make bench-hostile)
    python -m benchmarks.hostile --page 10000    (a version that still allowed 10,000-row pages)

Figures, printed and kept in artifacts/bench_hostile.json:
- `/metrics` bytes, lines and scrape time (median of 5) before and after 10,000 requests to
  distinct unknown paths, and their ratio;
- /classify latency (sequential, one client) alone, and while another client reads the
  prediction log `--page` rows at a time, back to back;
- /classify latency while a 50 MB header is sent, and what that header got back.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

from benchmarks import save_flat

OUT = Path("artifacts/bench_hostile.json")
TOKEN = "bench-hostile-admin-token"


def scrape_stats(url: str) -> tuple[int, int, float]:
    """(bytes, lines, median seconds) of five /metrics scrapes."""
    import httpx

    times, body = [], b""
    for _ in range(5):
        started = time.perf_counter()
        body = httpx.get(f"{url}/metrics", timeout=60).content
        times.append(time.perf_counter() - started)
    return len(body), body.count(b"\n"), statistics.median(times)


async def unknown_paths(url: str, n: int, concurrency: int = 32) -> None:
    import httpx

    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=concurrency)) as client:
        queue = iter(range(n))

        async def worker():
            for i in queue:
                await client.get(f"{url}/made-up/{i}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def classify_latencies(url: str, png: bytes, seconds: float) -> list[float]:
    import httpx

    out = []
    with httpx.Client(timeout=30) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.perf_counter()
            client.post(f"{url}/classify", files={"image": ("d.png", png)})
            out.append(time.perf_counter() - started)
    return out


def summary(prefix: str, latencies: list[float]) -> dict:
    ms = sorted(x * 1000 for x in latencies)
    return {f"{prefix}_p50_ms": round(ms[len(ms) // 2], 2), f"{prefix}_p99_ms": round(ms[int(len(ms) * 0.99)], 2),
            f"{prefix}_max_ms": round(ms[-1], 2), f"{prefix}_requests": len(ms)}


def while_running(background, url: str, png: bytes, seconds: float) -> list[float]:
    """/classify latencies while `background(stop)` runs in a thread until they are measured."""
    stop = threading.Event()
    thread = threading.Thread(target=background, args=(stop,), daemon=True)
    thread.start()
    try:
        return classify_latencies(url, png, seconds)
    finally:
        stop.set()
        thread.join(timeout=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paths", type=int, default=10_000, help="distinct unknown paths to request")
    parser.add_argument("--page", type=int, default=1_000, help="rows per prediction-log page")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each latency measurement")
    args = parser.parse_args(argv)

    import io

    import httpx
    import numpy as np
    from PIL import Image

    from harness.server import Server
    from harness.traffic import holdout_samples

    png = holdout_samples()[0].png
    results: dict = {}
    with Server(env={"CLASSGUARD_ADMIN_TOKEN": TOKEN}) as server:
        url = server.url
        # a log to read pages from: 40 batches of 256 images as one .npy each
        images = np.stack([np.asarray(Image.open(io.BytesIO(s.png))) for s in holdout_samples()[:256]])
        buffer = io.BytesIO()
        np.save(buffer, images)
        for _ in range(40):
            httpx.post(f"{url}/classify_batch", files={"array": ("a.npy", buffer.getvalue())}, timeout=60)
        classify_latencies(url, png, 1.0)  # warm-up
        print("filled the log with 10,240 answers", file=sys.stderr)

        size, lines, took = scrape_stats(url)
        results.update(metrics_bytes_before=size, metrics_lines_before=lines, scrape_ms_before=round(took * 1000, 2))
        started = time.monotonic()
        asyncio.run(unknown_paths(url, args.paths))
        print(f"{args.paths} unknown paths in {time.monotonic() - started:.1f} s", file=sys.stderr)
        size, lines, took = scrape_stats(url)
        results.update(metrics_bytes_after=size, metrics_lines_after=lines, scrape_ms_after=round(took * 1000, 2),
                       metrics_size_ratio=round(size / results["metrics_bytes_before"], 3))

        results.update(summary("classify_alone", classify_latencies(url, png, args.seconds)))
        pages = []

        def read_pages(stop: threading.Event) -> None:
            with httpx.Client(timeout=120, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
                while not stop.is_set():
                    r = client.get(f"{url}/admin/predictions", params={"limit": str(args.page)})
                    pages.append((r.status_code, len(r.content)))

        results.update(summary("classify_while_paging", while_running(read_pages, url, png, args.seconds)))
        results.update(page_rows=args.page, pages_read=len(pages),
                       page_status=sorted({s for s, _ in pages}), page_bytes=max((b for _, b in pages), default=0))

        answer: dict = {}

        def huge_header(stop: threading.Event) -> None:
            host, port = url.removeprefix("http://").split(":")
            started = time.perf_counter()
            with socket.create_connection((host, int(port)), timeout=60) as sock:
                try:
                    sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 50_000_000 + b"\r\n\r\n")
                except OSError as exc:
                    answer["send_error"] = type(exc).__name__
                try:
                    answer["status_line"] = sock.recv(200).split(b"\r\n")[0].decode()
                except OSError as exc:
                    answer["status_line"] = type(exc).__name__
            answer["seconds"] = round(time.perf_counter() - started, 3)

        results.update(summary("classify_during_50mb_header", while_running(huge_header, url, png, args.seconds)))
        results.update({f"huge_header_{k}": v for k, v in answer.items()})
    save_flat(OUT, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
