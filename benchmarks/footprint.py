"""What one replica needs, measured, so a pod's resource requests and limits come from figures.

    python -m benchmarks.footprint        (3-4 minutes on this 2-core machine)

One replica is one `bentoml serve` process tree: the server process and its workers
(BentoML starts each worker in a session of its own; harness.server.descendants finds them).
It is started with harness.server.Server and the default config (config/classguard.yaml:
workers 1, torch_threads 1, monitors, guardrails and the SQLite prediction log on), then once
more with workers 2 (CLASSGUARD_WORKERS=2), as a pod running two workers would. Measured:

1. Start-up: seconds from spawning `bentoml serve` until /readyz answers 200, what a startup
   probe must allow (`--starts` runs; the harness polls every 0.25 s, the resolution). These
   ran with both of this machine's cores free and the files in the page cache; a CPU-limited
   pod, or a node reading the image's files for the first time, starts slower.
2. Memory of the whole tree, in MB, four ways:
   - RSS (smaps_rollup, summed): every resident page each process maps. The server and its
     workers map the same libraries (the interpreter, torch, numpy), so shared pages count
     once per process: an upper bound, and what `ps` and most per-process tools show.
   - PSS (smaps_rollup, summed): each shared page split among the processes that map it,
     Private + Shared/(processes sharing it). Over a tree that shares its pages with nothing
     outside it, the tree's distinct pages; on a machine where other processes map the same
     files (another server of this install, tests), it reads low by their share.
   - distinct: the pages any process of the tree maps, each counted once (page frame numbers
     from /proc/PID/pagemap; needs root, else left out): what PSS would read with nothing
     else on the machine, and the mapped memory a container's memory cgroup is charged for
     when no other container maps the same files. Checked once against a real cgroup (v1)
     holding the replica: its anonymous memory equalled `anon` to the MB, and its working
     set (usage - inactive_file, what kubelet evicts on and `kubectl top` shows) came within
     7% of PSS on a machine then otherwise quiet.
   - anon (Pss_Anon, summed): the heap and stacks, which cannot be reclaimed without swap:
     the floor under which the OOM killer acts. The rest is file-backed (libraries, mapped
     files), which the kernel may drop and reread under pressure (this VM pages cold file
     pages out on its own, so the file-backed part reads lower here than on a busy node).
   Read idle after start-up; every 0.2 s during closed-loop load at each concurrency, the
   distinct count every 1 s (peak and mean kept); and idle again after `--requests` requests
   in all, once the prediction log has written every answer, to see whether the log's queue,
   the monitor windows or the drift-report buffers grow memory. Not in any of these: the page
   cache of the SQLite log, written with write() (its size on disk is printed: the cgroup is
   charged for it, and may reclaim it), and kernel memory such as socket buffers (about 10 MB
   in the cgroup check).
3. CPU: utime + stime from /proc/PID/stat of every process of the tree, per request and per
   wall second (cores used) at each concurrency, with the requests/s achieved; and idle, over
   IDLE_CPU_S after the last request (the background threads: monitors, log, chain sync).
4. The largest images the limits accept (workers 1, after the rest): a square of
   `limits.max_image_pixels` as an 8-bit RGB PNG, then as a 16-bit grayscale one, each alone,
   then LARGEST_AT_ONCE of the 16-bit one at once. Small uploads of digits never show what
   decoding one of these holds for a moment, so the worker's peak RSS is read from the
   kernel's high-water mark (VmHWM), and the tree's memory a second after shows what stays.

Load: a closed loop of `c` clients, each sending its next real test-split PNG (harness.traffic,
30% phone, the capture named in the context) to /classify as soon as the last is answered, for
`--seconds` per level. The client runs in this process, on the same 2 cores as the replica
(its CPU is printed beside; the memory sampler, a process of its own, takes about 0.15 of a
core more), so requests/s is what this machine gave, not the replica's ceiling. The request
bodies are made in a child process, so this one never maps numpy, PIL or torch: pages it
shared with the replica would lower the replica's PSS.
Results: progress on stderr, a table on stdout, everything in artifacts/footprint.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import pickle
import platform
import statistics
import subprocess
import sys
import time
from array import array
from pathlib import Path
from typing import Any

from harness import promtext
from harness.server import REPO, Server, descendants

OUT = Path("artifacts/footprint.json")
PHONE_SHARE, SEED, POOL = 0.3, 23, 2000
BOUNDARY = "classguardfootprintboundary"
SAMPLE_EVERY_S = 0.2
SETTLE_S = 2.0  # after readiness, before the idle reading: the workers finish their start-up threads
WARMUP_REQUESTS = 500  # TorchScript's profiling executor optimises on the first calls
CHUNK = 5000  # requests between progress lines on the way to --requests
LARGEST_AT_ONCE = 4
IDLE_CPU_S = 5.0  # idle CPU is read over this long: one monitor publish (every 5 s) falls in it
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
PRESENT, FRAME = 1 << 63, (1 << 55) - 1  # a /proc/PID/pagemap entry: bit 63, bits 0-54
DISTINCT_EVERY = 5  # memory readings per count of distinct pages under load (a count takes ~0.1 s of CPU)
STARTED = time.monotonic()


def progress(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:5.0f} s] {message}", file=sys.stderr, flush=True)


def multipart(png: bytes, context: dict[str, str] | None = None) -> bytes:
    body = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="image.png"\r\n'
            f'Content-Type: image/png\r\n\r\n').encode() + png + b"\r\n"
    if context is not None:
        body += (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="context"\r\n\r\n'
                 f'{json.dumps(context)}\r\n').encode()
    return body + f"--{BOUNDARY}--\r\n".encode()


def make_bodies(n: int) -> dict[str, Any]:
    """`n` multipart bodies of real test-split PNGs with their capture in the context, and the
    largest images the configured limits accept: a square of `limits.max_image_pixels`, as a
    16-bit grayscale PNG and as an 8-bit RGB one, with enough seeded noise to pass 256 KB (a
    bigger upload is decoded on a thread of its own, so several are decoded at once)."""
    import io
    import math

    import numpy as np
    from PIL import Image

    from core.config import Settings
    from harness import traffic

    def png(pixels: np.ndarray) -> bytes:
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, format="PNG")
        return out.getvalue()

    samples = traffic.stream(traffic.holdout_samples(), n, phone_share=PHONE_SHARE, seed=SEED)
    limits = Settings().limits
    side = min(math.isqrt(limits.max_image_pixels), limits.max_image_side)
    gray16 = np.tile((np.arange(side, dtype=np.uint32) * 10 % 65536).astype(np.uint16), (side, 1))
    rng = np.random.default_rng(SEED)
    gray16[rng.integers(0, side, 60_000), rng.integers(0, side, 60_000)] = 7
    rgb = np.repeat((gray16 >> 8).astype(np.uint8)[:, :, None], 3, axis=2)
    return {"digits": [multipart(s.png, {"capture": s.capture}) for s in samples], "side": side,
            "largest": {"8-bit RGB": multipart(png(rgb)), "16-bit gray": multipart(png(gray16))}}


def request_bodies(n: int) -> dict[str, Any]:
    """make_bodies(n), run in a child process (see the module docstring)."""
    made = subprocess.run([sys.executable, "-m", "benchmarks.footprint", "--make-bodies", str(n)], cwd=REPO,
                          capture_output=True, check=True)
    return pickle.loads(made.stdout)


# -- reading the process tree -------------------------------------------------------------------
def tree(server: Server) -> list[int]:
    return [server.process.pid, *descendants(server.process.pid)]


def rollup(pid: int) -> dict[str, int]:
    """/proc/PID/smaps_rollup in kB ({} for a process gone)."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
    except OSError:
        return {}
    return {name: int(value.split()[0]) for name, value in (line.split(":", 1) for line in lines)}


def memory(pids: list[int], *, distinct: bool = True) -> dict[str, float]:
    """PSS, RSS and anonymous PSS of the processes together, in MB, and (`distinct`, when this
    process may read page frame numbers) their distinct resident pages."""
    rollups = [rollup(pid) for pid in pids]
    out = {f"{key}_mb": sum(r.get(field, 0) for r in rollups) / 1024
           for key, field in (("pss", "Pss"), ("rss", "Rss"), ("anon", "Pss_Anon"))}
    if distinct and (mb := distinct_mb(pids)) is not None:
        out["distinct_mb"] = mb
    return out


def distinct_mb(pids: list[int]) -> float | None:
    """Resident pages mapped by any of the processes, each counted once however many map it,
    from /proc/PID/pagemap. Reading page frame numbers needs CAP_SYS_ADMIN; without it the
    kernel shows them as 0, and this returns None."""
    frames: set[int] = set()
    for pid in pids:
        try:
            maps, pagemap = open(f"/proc/{pid}/maps"), open(f"/proc/{pid}/pagemap", "rb")
        except OSError:
            continue
        with maps, pagemap:
            for line in maps:
                span, perms = line.split(None, 2)[:2]
                if perms.startswith("---"):  # guard regions: never resident
                    continue
                start, end = (int(x, 16) for x in span.split("-"))
                try:
                    pagemap.seek(start // PAGE * 8)
                    entries = array("Q", pagemap.read((end - start) // PAGE * 8))
                except (OSError, ValueError):  # [vsyscall]; a mapping that went away meanwhile
                    continue
                frames.update(e & FRAME for e in entries if e & PRESENT)
    if not frames or frames == {0}:
        return None
    return len(frames) * PAGE / 2**20


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """utime + stime of each process so far."""
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / TICK  # fields 14 and 15 of proc_pid_stat(5)
    return out


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    # per process, so a process that appears in between counts from zero, not from another's total
    return sum(after[pid] - before.get(pid, 0.0) for pid in after)


def sample(pids: list[int], stop: Any, results: Any) -> None:
    """Read the memory of `pids` every SAMPLE_EVERY_S (the distinct pages every DISTINCT_EVERY-th
    time) until `stop` is set; send the readings back."""
    readings, k = [], 0
    while True:
        readings.append(memory(pids, distinct=k % DISTINCT_EVERY == 0))
        k += 1
        if stop.wait(SAMPLE_EVERY_S):
            break
    readings.append(memory(pids))
    results.send(readings)


class Sampler:
    """Samples the tree's memory while the block runs, in a process of its own: a count of
    distinct pages holds the interpreter lock for ~0.1 s, which the client in this process
    would wait for. `peak` holds each figure's largest sum (sums taken at one instant), `mean`
    their means."""

    def __init__(self, pids: list[int]) -> None:
        fork = multiprocessing.get_context("fork")
        self.samples: list[dict[str, float]] = []
        self._stop = fork.Event()
        self._results, sender = fork.Pipe(duplex=False)
        self._process = fork.Process(target=sample, args=(pids, self._stop, sender), daemon=True)

    def __enter__(self) -> "Sampler":
        self._process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.samples = self._results.recv()
        self._process.join()

    def _each(self) -> dict[str, list[float]]:
        keys = dict.fromkeys(k for s in self.samples for k in s)
        return {k: [s[k] for s in self.samples if k in s] for k in keys}

    @property
    def peak(self) -> dict[str, float]:
        return {k: max(v) for k, v in self._each().items()}

    @property
    def mean(self) -> dict[str, float]:
        return {k: statistics.fmean(v) for k, v in self._each().items()}


# -- load -----------------------------------------------------------------------------------------
async def closed_loop(url: str, bodies: list[bytes], concurrency: int, *, seconds: float | None = None,
                      requests: int | None = None) -> dict[str, int]:
    """`concurrency` clients, each sending its next body as soon as its last was answered, until
    `seconds` pass or `requests` have been sent; answered (200) and failed counts."""
    import aiohttp

    deadline = time.monotonic() + seconds if seconds is not None else float("inf")
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    counts = {"answered": 0, "failed": 0}
    sent = 0

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal sent
        while time.monotonic() < deadline and (requests is None or sent < requests):
            body = bodies[sent % len(bodies)]
            sent += 1
            try:
                async with session.post(f"{url}/classify", data=body, headers=headers) as r:
                    await r.read()
                    counts["answered" if r.status == 200 else "failed"] += 1
            except (aiohttp.ClientError, asyncio.TimeoutError):
                counts["failed"] += 1

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return counts


def measure_load(server: Server, bodies: list[bytes], concurrency: int, *, seconds: float | None = None,
                 requests: int | None = None, each: int | None = None) -> dict[str, Any]:
    """Closed-loop load for `seconds`, or `requests` sent `each` at a time (a progress line per
    part): requests/s, the tree's CPU, its memory peak and mean, the client's own CPU."""
    pids = tree(server)
    cpu_before, client_before, began = cpu_seconds(pids), time.process_time(), time.monotonic()
    counts = {"answered": 0, "failed": 0}
    with Sampler(pids) as sampler:
        if seconds is not None:
            counts = asyncio.run(closed_loop(server.url, bodies, concurrency, seconds=seconds))
        else:
            left = requests or 0
            while left > 0:
                part = asyncio.run(closed_loop(server.url, bodies, concurrency, requests=min(left, each or left)))
                counts = {k: counts[k] + part[k] for k in counts}
                left -= sum(part.values())
                now = memory(pids, distinct=False)
                progress(f"  {sum(counts.values())}/{requests} sent; {now['rss_mb']:.0f} MB RSS, "
                         f"{now['pss_mb']:.0f} MB PSS")
    wall = time.monotonic() - began
    cpu = cpu_used(cpu_before, cpu_seconds(pids))
    total = counts["answered"] + counts["failed"]
    return {"concurrency": concurrency, "requests": total, "answered": counts["answered"],
            "failed": counts["failed"], "seconds": wall, "requests_per_s": total / wall, "cpu_s": cpu,
            "cpu_ms_per_request": cpu / max(total, 1) * 1e3, "cores_used": cpu / wall,
            "client_cores": (time.process_time() - client_before) / wall, "memory_peak": sampler.peak,
            "memory_mean": sampler.mean, "memory_samples": len(sampler.samples)}


def said(phase: dict[str, Any], label: str) -> None:
    progress(f"{label}: {phase['requests_per_s']:5.0f} req/s, {phase['cpu_ms_per_request']:.2f} ms CPU/request, "
             f"{phase['cores_used']:.2f} cores (client {phase['client_cores']:.2f}); peak "
             f"{phase['memory_peak']['pss_mb']:.0f} MB PSS, {phase['memory_peak']['rss_mb']:.0f} MB RSS; "
             f"{phase['failed']} failed")


def log_files_mb(server: Server) -> float:
    """The SQLite prediction log's files on disk (database, WAL, shared memory)."""
    base = Path(server.env["CLASSGUARD_LOG__PATH"])
    files = (base, Path(f"{base}-wal"), Path(f"{base}-shm"))
    return sum(p.stat().st_size for p in files if p.exists()) / 2**20


def queues(server: Server) -> dict[str, float]:
    s = promtext.scrape(server.url)
    return {"log_rows_written": promtext.total(s, "classguard_log_rows_written_total"),
            "log_rows_dropped": promtext.total(s, "classguard_log_rows_dropped_total"),
            "monitor_events_dropped": promtext.total(s, "classguard_monitor_events_dropped_total")}


def wait_logged(server: Server, answered: int, timeout: float = 30.0) -> dict[str, float]:
    """Until the log has written (or dropped) every answer: its queue is empty."""
    deadline = time.monotonic() + timeout
    while True:
        state = queues(server)
        if state["log_rows_written"] + state["log_rows_dropped"] >= answered or time.monotonic() > deadline:
            return state
        time.sleep(0.25)


# -- the parts ------------------------------------------------------------------------------------
def start(env: dict[str, str]) -> tuple[Server, float, dict[str, float]]:
    """A started server, seconds to ready, and its idle memory SETTLE_S after."""
    server = Server(env=env)
    began = time.monotonic()
    server.__enter__()
    ready = time.monotonic() - began
    time.sleep(SETTLE_S)
    return server, ready, memory(tree(server))


def one_worker(bodies: list[bytes], largest: dict[str, bytes], starts: int, levels: list[int], seconds: float,
               total: int) -> dict[str, Any]:
    startup, idle_at_start = [], []
    for k in range(starts):
        server, ready, idle = start({})
        startup.append(ready)
        idle_at_start.append(idle)
        progress(f"workers 1, start {k + 1}/{starts}: ready in {ready:.2f} s; idle {idle['pss_mb']:.0f} MB PSS, "
                 f"{idle['rss_mb']:.0f} MB RSS, {len(tree(server))} processes")
        if k < starts - 1:
            server.stop()
    try:
        processes = len(tree(server))
        answered = asyncio.run(closed_loop(server.url, bodies, 8, requests=WARMUP_REQUESTS))["answered"]
        time.sleep(1.0)
        after_warmup = memory(tree(server))
        progress(f"workers 1: warmed up ({WARMUP_REQUESTS} requests); idle {after_warmup['pss_mb']:.0f} MB PSS")
        sent, phases = WARMUP_REQUESTS, []
        for c in levels:
            phase = measure_load(server, bodies, c, seconds=seconds)
            said(phase, f"workers 1, c={c:>2}")
            phases.append(phase)
            sent += phase["requests"]
            answered += phase["answered"]
        fill = max(0, total - sent)
        progress(f"workers 1: {fill} more requests at c={levels[-1]}, to {total} in all")
        rest = measure_load(server, bodies, levels[-1], requests=fill, each=CHUNK)
        said(rest, f"workers 1, c={levels[-1]}, {fill} requests")
        sent += rest["requests"]
        answered += rest["answered"]
        log_state = wait_logged(server, answered)
        pids = tree(server)
        cpu_before = cpu_seconds(pids)
        time.sleep(IDLE_CPU_S)
        idle_cores = cpu_used(cpu_before, cpu_seconds(pids)) / IDLE_CPU_S
        after_total = memory(pids)
        log_mb = log_files_mb(server)
        growth = {k: after_total[k] - after_warmup[k] for k in after_total if k in after_warmup}
        progress(f"workers 1: after {sent} requests, idle {after_total['pss_mb']:.0f} MB PSS "
                 f"({growth['pss_mb']:+.1f} MB since the warm-up), {idle_cores:.3f} cores; log "
                 f"{log_state['log_rows_written']:.0f} rows written, {log_state['log_rows_dropped']:.0f} dropped")
        big = largest_images(server, largest)
    finally:
        server.stop()
    return {"workers": 1, "processes": processes, "startup_s": startup, "idle_after_start": idle_at_start,
            "idle_after_warmup": after_warmup, "load": phases, "to_total": rest, "requests_total": sent,
            "answered_total": answered, "idle_after_total": after_total, "growth_since_warmup_mb": growth,
            "idle_cores": idle_cores, "queues_after_total": log_state, "log_files_mb": log_mb, "largest_images": big}


def peak_rss_mb(pid: int) -> float:
    """The process's largest RSS so far (VmHWM): kept by the kernel, so no brief peak is missed."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmHWM for process {pid}")


def largest_images(server: Server, largest: dict[str, bytes]) -> list[dict[str, Any]]:
    """Each largest accepted image alone, then LARGEST_AT_ONCE 16-bit ones at once (in that
    order: the peaks grow, so each shows in VmHWM): the worker's peak RSS, the tree's estimated
    peak (its memory before plus what the worker's peak added to its RSS), and the tree's memory
    a second after (what stays)."""
    (worker,) = descendants(server.process.pid)
    results = []
    for name, at_once in (("8-bit RGB", 1), ("16-bit gray", 1), ("16-bit gray", LARGEST_AT_ONCE)):
        before, worker_before = memory(tree(server)), rollup(worker)["Rss"] / 1024
        began = time.monotonic()
        counts = asyncio.run(closed_loop(server.url, [largest[name]], at_once, requests=at_once))
        seconds = time.monotonic() - began
        time.sleep(1.0)
        peak = peak_rss_mb(worker)
        base = before.get("distinct_mb", before["pss_mb"])
        results.append({"image": name, "at_once": at_once, "answered": counts["answered"], "seconds": seconds,
                        "before": before, "worker_rss_before_mb": worker_before, "worker_peak_rss_mb": peak,
                        "tree_peak_estimate_mb": base + peak - worker_before, "after": memory(tree(server))})
        progress(f"workers 1, {at_once} x largest {name}: {counts['answered']} answered in {seconds:.1f} s; worker "
                 f"peak RSS {peak:.0f} MB (from {worker_before:.0f}); tree after: "
                 f"{results[-1]['after']['anon_mb']:.0f} MB anon")
    return results


def two_workers(bodies: list[bytes], concurrency: int, seconds: float) -> dict[str, Any]:
    server, ready, idle = start({"CLASSGUARD_WORKERS": "2"})
    try:
        processes = len(tree(server))
        progress(f"workers 2: ready in {ready:.2f} s; idle {idle['pss_mb']:.0f} MB PSS, {idle['rss_mb']:.0f} MB RSS, "
                 f"{processes} processes")
        asyncio.run(closed_loop(server.url, bodies, 8, requests=WARMUP_REQUESTS))
        phase = measure_load(server, bodies, concurrency, seconds=seconds)
        said(phase, f"workers 2, c={concurrency}")
    finally:
        server.stop()
    return {"workers": 2, "processes": processes, "startup_s": [ready], "idle_after_start": [idle], "load": [phase]}


# -- the report -----------------------------------------------------------------------------------
def print_summary(report: dict[str, Any]) -> None:
    one, two = report["workers_1"], report["workers_2"]
    print(f"\none replica (`bentoml serve` + its workers), {report['machine']}; memory in MB of the process tree: "
          f"RSS (shared pages counted in every process), PSS (shared pages split), distinct (each page once), "
          f"anon (heap and stacks)")
    for r in (one, two):
        s = r["startup_s"]
        print(f"workers {r['workers']}: {r['processes']} processes; start to /readyz 200: "
              + ", ".join(f"{x:.2f}" for x in s) + " s")
    print(f"\n{'workers':>7} {'state':<30} {'req/s':>6} {'CPU ms/req':>10} {'cores':>6} {'client':>6} "
          f"{'RSS':>6} {'PSS':>6} {'distinct':>8} {'anon':>6} {'mean PSS':>8} {'distinct':>8}")
    idle_start = max(one["idle_after_start"], key=lambda m: m["rss_mb"])
    rows = [(1, f"idle after start (max of {len(one['idle_after_start'])})", None, idle_start),
            (1, f"idle after {report['config']['warmup']} requests", None, one["idle_after_warmup"])]
    rows += [(1, f"c={p['concurrency']}, {p['seconds']:.0f} s, peak", p, p["memory_peak"]) for p in one["load"]]
    rest = one["to_total"]
    rows += [(1, f"c={rest['concurrency']}, to {one['requests_total']:,}, peak", rest, rest["memory_peak"]),
             (1, f"idle after {one['requests_total']:,} requests", None, one["idle_after_total"]),
             (2, "idle after start", None, two["idle_after_start"][0])]
    rows += [(2, f"c={p['concurrency']}, {p['seconds']:.0f} s, peak", p, p["memory_peak"]) for p in two["load"]]

    def mb(m: dict[str, float], key: str, width: int) -> str:
        return f"{m[key]:>{width}.0f}" if key in m else f"{'-':>{width}}"

    for workers, state, p, m in rows:
        load = (f"{p['requests_per_s']:>6.0f} {p['cpu_ms_per_request']:>10.2f} {p['cores_used']:>6.2f} "
                f"{p['client_cores']:>6.2f}" if p else f"{'':>6} {'':>10} {'':>6} {'':>6}")
        mean = f"{mb(p['memory_mean'], 'pss_mb', 8)} {mb(p['memory_mean'], 'distinct_mb', 8)}" if p else ""
        print(f"{workers:>7} {state:<30} {load} {mb(m, 'rss_mb', 6)} {mb(m, 'pss_mb', 6)} {mb(m, 'distinct_mb', 8)} "
              f"{mb(m, 'anon_mb', 6)} {mean}")
    g, q = one["growth_since_warmup_mb"], one["queues_after_total"]
    print(f"\nworkers 1, idle after {report['config']['warmup']} requests -> idle after {one['requests_total']:,}: "
          + ", ".join(f"{k.removesuffix('_mb')} {v:+.1f} MB" for k, v in g.items())
          + f"; the log wrote {q['log_rows_written']:,.0f} rows of {one['answered_total']:,} answers "
          f"({q['log_rows_dropped']:.0f} dropped; monitor events dropped: {q['monitor_events_dropped']:.0f}); "
          f"its files on disk: {one['log_files_mb']:.1f} MB (page cache, in none of the figures above); "
          f"idle CPU then: {one['idle_cores']:.3f} cores")
    side = report["config"]["largest_side"]
    print(f"\nworkers 1, the largest images the limits accept ({side} x {side} pixels; uploads of "
          + ", ".join(f"{k} {v / 1e3:.0f} KB" for k, v in report["config"]["largest_upload_bytes"].items())
          + f"), after the {one['requests_total']:,} requests:")
    print(f"{'image':<14} {'at once':>7} {'answered':>8} {'seconds':>7} {'worker RSS before':>17} "
          f"{'worker peak RSS':>15} {'tree peak (est.)':>16} {'tree anon before':>16} {'anon after':>10}")
    for r in one["largest_images"]:
        print(f"{r['image']:<14} {r['at_once']:>7} {r['answered']:>8} {r['seconds']:>7.1f} "
              f"{r['worker_rss_before_mb']:>17.0f} {r['worker_peak_rss_mb']:>15.0f} "
              f"{r['tree_peak_estimate_mb']:>16.0f} {r['before']['anon_mb']:>16.0f} {r['after']['anon_mb']:>10.0f}")
    print(f"took {report['seconds']:.0f} s; everything in {OUT}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=3, help="timed start-ups with workers 1")
    parser.add_argument("--concurrency", type=lambda s: [int(n) for n in s.split(",")], default=[1, 8, 32],
                        help="closed-loop clients per load level; the last is also used for workers 2")
    parser.add_argument("--seconds", type=float, default=10.0, help="per load level")
    parser.add_argument("--requests", type=int, default=50_000, help="requests in all before the last idle reading")
    parser.add_argument("--make-bodies", type=int, metavar="N", help=argparse.SUPPRESS)  # the child's part
    args = parser.parse_args(argv)
    if args.make_bodies:
        sys.stdout.buffer.write(pickle.dumps(make_bodies(args.make_bodies)))
        return 0

    progress("making request bodies")
    made = request_bodies(POOL)
    bodies, largest = made["digits"], made["largest"]
    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "config": {"starts": args.starts, "concurrency": args.concurrency, "seconds_per_level": args.seconds,
                   "requests": args.requests, "warmup": WARMUP_REQUESTS, "sample_every_s": SAMPLE_EVERY_S,
                   "settle_s": SETTLE_S, "phone_share": PHONE_SHARE, "distinct_bodies": len(bodies),
                   "largest_side": made["side"], "largest_at_once": LARGEST_AT_ONCE,
                   "largest_upload_bytes": {name: len(body) for name, body in largest.items()}},
        "workers_1": one_worker(bodies, largest, args.starts, args.concurrency, args.seconds, args.requests),
        "workers_2": two_workers(bodies, args.concurrency[-1], args.seconds),
    }
    report["seconds"] = time.monotonic() - STARTED
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print_summary(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
