"""A small model of your own, for the tutorial (docs: "Tutorial: your own model") and its test.

    python -m harness.example_model make DIR      DIR/model.ts and DIR/val/ (a folder per class,
                                                 subgroups.csv with a `camera` column)
    python -m harness.example_model traffic URL [--n 600] [--phone-share 0.9]

The model is a TorchScript CNN on 16 x 16 RGB images with three classes (red, green, blue) and
an `embed` method (its pooled features), so it gets a codebook of regions. Its weights are set,
not trained: it answers the brightest channel. Images come from two cameras: `studio` ones are
clean, `phone` ones of red things have a strong green cast half the time, so the model answers
`green` for them: the subgroup it serves worse, as the digits' phone captures are served worse.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

CLASSES = ("red", "green", "blue")
SIDE = 16


def build_model():
    """The TorchScript module: forward(x) -> 3 logits, embed(x) -> 8 pooled features."""
    import torch
    from torch import nn

    class ColourNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.head = nn.Linear(8 * SIDE * SIDE, 3)
            with torch.no_grad():  # feature c copies channel c; the head sums each channel's copy
                self.conv.weight.zero_()
                self.conv.bias.zero_()
                for c in range(3):
                    self.conv.weight[c, c, 1, 1] = 1.0
                self.head.weight.zero_()
                self.head.bias.zero_()
                for c in range(3):
                    self.head.weight[c, c * SIDE * SIDE:(c + 1) * SIDE * SIDE] = 10.0 / (SIDE * SIDE)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.conv(x)).flatten(1))

        @torch.jit.export
        def embed(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.conv(x)).mean(dim=(2, 3))

    return torch.jit.script(ColourNet().eval())


def samples(n: int, *, phone_share: float, seed: int) -> Iterator[tuple[np.ndarray, str, str]]:
    """(16 x 16 x 3 uint8 image, class, camera) n times, classes balanced."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        c = i % 3
        camera = "phone" if rng.random() < phone_share else "studio"
        image = rng.integers(0, 60, (SIDE, SIDE, 3)).astype(np.uint8)
        image[..., c] = 200 + rng.integers(0, 50, (SIDE, SIDE))
        if camera == "phone" and c == 0 and rng.random() < 0.5:
            image[..., 1] = 235 + rng.integers(0, 20, (SIDE, SIDE))  # the green cast
        yield image, CLASSES[c], camera


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(image).save(out, "PNG")
    return out.getvalue()


def make(out: Path, per_class: int = 40) -> None:
    out.mkdir(parents=True, exist_ok=True)
    build_model().save(str(out / "model.ts"))
    rows = ["path,camera"]
    for i, (image, label, camera) in enumerate(samples(3 * per_class, phone_share=0.3, seed=1)):
        (out / "val" / label).mkdir(parents=True, exist_ok=True)
        (out / "val" / label / f"{i:04d}.png").write_bytes(png(image))
        rows.append(f"{label}/{i:04d}.png,{camera}")
    (out / "val" / "subgroups.csv").write_text("\n".join(rows) + "\n")
    cameras = Counter(row.rsplit(",", 1)[1] for row in rows[1:])
    print(f"wrote {out / 'model.ts'} and {out / 'val'}: {3 * per_class} images of {', '.join(CLASSES)}; "
          f"camera: {cameras['studio']} studio, {cameras['phone']} phone")


def traffic(url: str, n: int, phone_share: float, seed: int) -> int:
    """Send n images to URL/classify with their camera as `context`; print how each camera was served."""
    import httpx

    def send(sample: tuple[np.ndarray, str, str]) -> tuple[str, str, dict]:
        image, label, camera = sample
        response = client.post("/classify", files={"image": ("x.png", png(image), "image/png")},
                               data={"context": json.dumps({"camera": camera})})
        response.raise_for_status()
        return label, camera, response.json()

    served: Counter = Counter()
    with httpx.Client(base_url=url, timeout=30) as client, ThreadPoolExecutor(8) as pool:
        for label, camera, answer in pool.map(send, samples(n, phone_share=phone_share, seed=seed)):
            served[camera, "sent"] += 1
            served[camera, "right"] += answer["label"] == label
            served[camera, "abstained"] += bool(answer["abstained"])
    for camera in ("phone", "studio"):
        sent = served[camera, "sent"]
        if sent:
            print(f"camera={camera}: {sent} sent, {served[camera, 'right'] / sent:.1%} answered right, "
                  f"{served[camera, 'abstained']} abstained")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.example_model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("make").add_argument("out", type=Path)
    send = commands.add_parser("traffic")
    send.add_argument("url")
    send.add_argument("--n", type=int, default=600)
    send.add_argument("--phone-share", type=float, default=0.9)
    send.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if args.command == "make":
        make(args.out)
        return 0
    return traffic(args.url, args.n, args.phone_share, args.seed)


if __name__ == "__main__":
    sys.exit(main())
