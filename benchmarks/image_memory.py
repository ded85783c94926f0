"""What uploads that are small on the wire and huge decoded cost a worker: CPU seconds of every
server process and the worker's peak resident memory (VmHWM, reset before each case), against
a real `bentoml serve` of one worker with the default limits.

    python -m benchmarks.image_memory            (part of make bench-hostile)

Cases: the 77 KB 6300 x 6300 16-bit PNG alone and 20 of them in one batch; a batch of the
costliest accepted 40M-pixel images; a 40M-pixel lossless WebP (refused at its header).
Figures printed and kept in artifacts/bench_image_memory.json.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from benchmarks import save_flat

OUT = Path("artifacts/bench_image_memory.json")


def _status_mib(pid: int, key: str) -> float:
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith(key))
    return int(line.split()[1]) / 1024


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cases() -> dict[str, list[tuple[str, bytes]]]:
    """Case name -> the multipart files it posts (one `image` goes to /classify)."""
    from PIL import Image

    from harness.uploads import SIDE, encoded, png_of_zeros

    grey16 = png_of_zeros(6300, 6300, 16, 0, 1)
    costly = [encoded(Image.new("F", (SIDE, SIDE), 0.5), "TIFF", compression="tiff_adobe_deflate"),
              encoded(Image.new("I", (SIDE, SIDE), 70_000), "TIFF", compression="tiff_adobe_deflate"),
              png_of_zeros(SIDE, SIDE, 16, 6, 4), png_of_zeros(SIDE, SIDE, 16, 2, 3),
              encoded(Image.new("CMYK", (SIDE, SIDE), (10, 20, 30, 40)), "JPEG", quality=95)]
    webp = encoded(Image.new("RGBA", (SIDE, SIDE), (1, 2, 3, 4)), "WEBP", lossless=True)
    return {"16-bit PNG 6300x6300, /classify": [("image", grey16)],
            "20 of them, /classify_batch": [("images", grey16)] * 20,
            "5 costliest 40M-pixel images, /classify_batch": [("images", u) for u in costly],
            "40M-pixel lossless WebP, /classify": [("image", webp)]}


def main() -> int:
    import httpx

    from harness.server import Server, descendants

    results: dict[str, dict] = {}
    with Server(env={"CLASSGUARD_WORKERS": "1"}) as server:
        pids = [server.process.pid, *descendants(server.process.pid)]
        worker = max(pids[1:], key=lambda pid: _status_mib(pid, "VmRSS"))
        print(f"worker at rest: {_status_mib(worker, 'VmRSS'):.0f} MiB", flush=True)
        for name, files in cases().items():
            print(f"{name} ...", flush=True)
            for pid in pids:
                Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM starts again from now
            cpu, started = sum(map(_cpu_seconds, pids)), time.perf_counter()
            path = "classify" if files[0][0] == "image" else "classify_batch"
            r = httpx.post(f"{server.url}/{path}", files=[(f, (str(i), d)) for i, (f, d) in enumerate(files)],
                           timeout=600)
            results[name] = {"status": r.status_code, "upload_bytes": sum(len(d) for _, d in files),
                             "wall_s": round(time.perf_counter() - started, 2),
                             "cpu_s": round(sum(map(_cpu_seconds, pids)) - cpu, 2),
                             "worker_peak_mib": round(_status_mib(worker, "VmHWM")),
                             "server_peak_mib": round(sum(_status_mib(pid, "VmHWM") for pid in pids))}
    save_flat(OUT, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
