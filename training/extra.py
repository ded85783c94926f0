"""Labelled production inputs, as `classguard dataset export -o DIR` writes them, read as a Split.

    DIR/<class name>/<request id>.png   one folder per class (the true label)
    DIR/_unlabelled/...                 inputs without a label: a folder starting with `_` is no class
    DIR/manifest.jsonl                  a line per input, oldest first: path (relative to DIR), subgroup, ...

Each PNG is read as the service reads an upload for the incident's models: 8-bit grey, resized
to 8 x 8 with a box filter when it is another size. Its capture is the `capture` attribute of
the manifest's subgroup key (`capture=scanner` -> `scanner`), `unknown` where the manifest has
no line for it or the key no such attribute.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from core.keys import parse_subgroup_key
from training.digits import Split, _concat

SIDE = 8
UNKNOWN_CAPTURE = "unknown"


class ExportError(ValueError):
    """An export folder that cannot be read as training data (the message says why)."""


def read_export(folder: Path, class_names: Sequence[str]) -> Split:
    """Every labelled image of an export, in the manifest's order (images it does not list
    follow, by path). A class folder not in `class_names` or an export without one labelled
    image is a ValueError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ExportError(f"{folder} is not a folder")
    index = {name: i for i, name in enumerate(class_names)}
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("_"))
    unknown = [p.name for p in classes if p.name not in index]
    if unknown:
        raise ExportError(f"{folder}: class folder(s) {', '.join(map(repr, unknown))} not among the model's "
                         f"classes ({', '.join(class_names)})")
    paths = [p.relative_to(folder).as_posix() for c in classes for p in c.iterdir()
             if p.is_file() and p.suffix.lower() == ".png"]
    if not paths:
        raise ExportError(f"{folder} holds no labelled image (a PNG in a class folder): nothing to train on")
    subgroups = manifest_subgroups(folder / "manifest.jsonl")
    position = {path: i for i, path in enumerate(subgroups)}
    paths.sort(key=lambda path: (position.get(path, len(position)), path))
    images = np.stack([read_image(folder / path) for path in paths])
    labels = np.array([index[path.split("/", 1)[0]] for path in paths], dtype=np.int64)
    captures = np.array([parse_subgroup_key(subgroups.get(path) or "").get("capture", UNKNOWN_CAPTURE)
                         for path in paths])
    return Split(images, labels, captures)


def manifest_subgroups(manifest: Path) -> dict[str, str | None]:
    """path -> subgroup key, in the manifest's order (empty when there is no manifest)."""
    if not manifest.exists():
        return {}
    subgroups: dict[str, str | None] = {}
    for number, line in enumerate(manifest.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            subgroups.setdefault(row["path"], row.get("subgroup"))
        except (ValueError, KeyError, TypeError) as exc:
            raise ExportError(f"{manifest}:{number}: not a manifest line ({type(exc).__name__}: {exc})") from None
    return subgroups


def read_image(path: Path) -> np.ndarray:
    """An 8 x 8 uint8 grey image, made as the service makes the model's input of an upload."""
    from PIL import Image

    with Image.open(path) as opened:
        # an export's PNGs are 8-bit grey or RGB (store.inputs.as_png): no alpha or 16-bit
        # samples, the cases where the service's conversion differs from Pillow's
        image = opened.convert("L")
    if image.size != (SIDE, SIDE):
        image = image.resize((SIDE, SIDE), Image.Resampling.BOX)
    return np.asarray(image, dtype=np.uint8)


def combine(*splits: Split) -> Split:
    """The splits one after the other."""
    if not splits:
        raise ValueError("combine needs at least one split")
    return _concat(*splits)
