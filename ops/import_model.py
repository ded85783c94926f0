"""Bring your own model: import a torch classifier and profile it on your validation set.

    classguard import-model NAME (--torchscript FILE | --state-dict FILE --module pkg.mod:Class)
                            (--val-npz FILE | --val-dir DIR) [--write-config DIR] [options]

--write-config DIR writes a starting configuration for it (`classguard init`'s).

The validation images go through exactly the preprocessing the service applies to uploads,
so the stored profile describes what the service will see.

Validation data:
  --val-npz: arrays `images` (N x H x W or N x H x W x 3; uint8 0..255 or float 0..1),
             `labels` (N; class indices, or class names matching --labels), optional
             `subgroup_<attribute>` (N strings, e.g. subgroup_capture) and `class_names`.
  --val-dir: one folder per class (folder name = class name) of image files; an optional
             `subgroups.csv` in DIR maps `path` (relative to DIR) to attribute columns.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

HELP = "import your own classifier and profile it"
# the usage above is this command's --help
PARSER = {"description": __doc__, "formatter_class": argparse.RawDescriptionHelpFormatter}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}


def load_module(torchscript: Path | None, state_dict: Path | None, module_path: str | None,
                module_kwargs: dict[str, Any], example: Any) -> Any:
    """A TorchScript module, from a TorchScript file or a state_dict plus its module class."""
    import torch

    if torchscript is not None:
        return torch.jit.load(str(torchscript), map_location="cpu").eval()
    if state_dict is None or not module_path:
        raise ValueError("give --torchscript FILE, or --state-dict FILE with --module pkg.mod:Class")
    module_name, _, attr = module_path.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    model = cls(**module_kwargs)
    model.load_state_dict(torch.load(str(state_dict), map_location="cpu", weights_only=True))
    model.eval()
    try:
        return torch.jit.script(model)
    except Exception:  # not scriptable: tracing records the forward pass on an example input
        return torch.jit.trace(model, example)


def _images_from_array(images: np.ndarray) -> list[Any]:
    from PIL import Image

    if images.dtype != np.uint8:
        images = np.clip(np.rint(images.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    return [Image.fromarray(img) for img in images]


def read_npz(path: Path, class_names: Sequence[str] | None) -> tuple[list[Any], np.ndarray, dict[str, np.ndarray], list[str]]:
    data = np.load(path, allow_pickle=False)
    for key in ("images", "labels"):
        if key not in data:
            raise ValueError(f"{path} has no `{key}` array (found: {sorted(data.files)})")
    names = list(class_names or (data["class_names"].astype(str).tolist() if "class_names" in data else []))
    raw = data["labels"]
    if raw.dtype.kind in "iu":
        labels = raw.astype(np.int64)
        names = names or [str(i) for i in range(int(labels.max()) + 1)]
    else:
        names = names or sorted(set(raw.astype(str).tolist()))
        labels = np.array([names.index(v) for v in raw.astype(str)], dtype=np.int64)
    subgroups = {k.removeprefix("subgroup_"): data[k].astype(str) for k in data.files if k.startswith("subgroup_")}
    return _images_from_array(data["images"]), labels, subgroups, names


def read_dir(path: Path, class_names: Sequence[str] | None) -> tuple[list[Any], np.ndarray, dict[str, np.ndarray], list[str]]:
    from PIL import Image

    # a folder whose name starts with `_` is not a class (`classguard dataset export` keeps unlabelled inputs in `_unlabelled`)
    names = list(class_names or sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("_")))
    if not names:
        raise ValueError(f"{path} has no class folders")
    table: dict[str, dict[str, str]] = {}
    if (path / "subgroups.csv").exists():
        with open(path / "subgroups.csv", newline="") as f:
            table = {row.pop("path"): row for row in csv.DictReader(f)}
    images, labels, rows = [], [], []
    for index, name in enumerate(names):
        for file in sorted((path / name).iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                with Image.open(file) as im:
                    images.append(im.copy())
                labels.append(index)
                rows.append(table.get(str(file.relative_to(path)), {}))
    attributes = sorted({k for r in rows for k in r})
    subgroups = {a: np.array([r.get(a, "other") for r in rows]) for a in attributes}
    return images, np.array(labels, dtype=np.int64), subgroups, names


def infer_input(images: Sequence[Any]) -> tuple[int, int, int]:
    """(height, width, channels) of the validation images: the most common size, and 3 channels
    when any image has colour (an RGB image whose bands are all equal counts as grey)."""
    from collections import Counter

    height, width = Counter((im.height, im.width) for im in images).most_common(1)[0][0]
    return height, width, 3 if any(_has_colour(im) for im in images) else 1


def _has_colour(image: Any) -> bool:
    if image.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"):
        return False
    rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    return bool(np.any(rgb[..., 0] != rgb[..., 1]) or np.any(rgb[..., 1] != rgb[..., 2]))


def parse_shares(text: str | None) -> dict[str, float] | None:
    """'capture=scanner:0.97,capture=phone:0.03' -> {'capture=scanner': 0.97, ...}."""
    if not text:
        return None
    shares = {}
    for part in text.split(","):
        key, _, value = part.rpartition(":")
        shares[key.strip()] = float(value)
    return shares


def import_model(
    name: str,
    *,
    torchscript: Path | None = None,
    state_dict: Path | None = None,
    module: str | None = None,
    module_kwargs: dict[str, Any] | None = None,
    val_npz: Path | None = None,
    val_dir: Path | None = None,
    labels: Sequence[str] | None = None,
    height: int | None = None,
    width: int | None = None,
    channels: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    training_shares: dict[str, float] | None = None,
) -> str:
    import torch

    from core.keys import subgroup_key
    from monitors.reference import InputSpec, build_profile, subgroup_shares
    from runtime.preprocess import normalise, to_unit_array
    from store.model_store import reference_rows, save_to_store

    if (val_npz is None) == (val_dir is None):
        raise ValueError("give exactly one of --val-npz and --val-dir")
    images, y, subgroups, names = read_npz(val_npz, labels) if val_npz else read_dir(val_dir, labels)
    if len(images) == 0:
        raise ValueError("the validation set is empty")
    found_height, found_width, found_channels = infer_input(images)
    height, width = height or found_height, width or found_width
    channels = channels or found_channels
    if mean is not None and len(mean) != channels or std is not None and len(std) != channels:
        raise ValueError(f"--mean and --std take one value per channel ({channels})")
    spec = InputSpec(height=height, width=width, channels=channels,
                     mean=tuple(mean or (0.0,) * channels), std=tuple(std or (1.0,) * channels))
    batch = np.stack([normalise(to_unit_array(im, spec), spec) for im in images]).astype(np.float32)
    try:
        scripted = load_module(torchscript, state_dict, module, module_kwargs or {}, torch.from_numpy(batch[:1]))
        with torch.inference_mode():  # one forward pass before anything else: a wrong input shape is a sentence
            probe = scripted(torch.from_numpy(batch[:1]))
    except (RuntimeError, ValueError, TypeError) as exc:
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise ValueError(f"the model does not take {channels} x {height} x {width} input (torch: {first[:200]}); "
                         "set --input-size HEIGHTxWIDTH and --channels to what it was trained on") from None
    if probe.ndim != 2 or probe.shape[1] != len(names):
        raise ValueError(f"the model answers {tuple(probe.shape[1:])} scores an image, the validation set names "
                         f"{len(names)} classes ({', '.join(names[:10])}); give --labels in the model's output order")
    print(f"{name}: input {channels} x {height} x {width} (" + ("as given" if (height, width, channels) != (
        found_height, found_width, found_channels) else "read from the validation images") + "), mean "
        f"{list(spec.mean)}, std {list(spec.std)}; {len(names)} classes", file=sys.stderr)
    with torch.inference_mode():
        logits = torch.cat([scripted(torch.from_numpy(batch[i:i + 256])) for i in range(0, len(batch), 256)])
    keys = [subgroup_key({a: str(v[i]) for a, v in sorted(subgroups.items())}) or "all" for i in range(len(y))]
    logits = logits.double().numpy()
    embeddings = None
    if hasattr(scripted, "embed"):  # its penultimate layer: the region codebook is fitted there
        with torch.inference_mode():
            embeddings = torch.cat([scripted.embed(torch.from_numpy(batch[i:i + 256]))
                                    for i in range(0, len(batch), 256)]).double().reshape(len(batch), -1).numpy()
    else:
        print(f"{name}: the model exports no `embed` method, so it gets no region codebook: region monitors "
              "stay off for it (every other monitor works as usual); export its penultimate layer as "
              "`@torch.jit.export def embed(self, x)` to have them", file=sys.stderr)
    profile = build_profile(
        logits=logits, labels=y, subgroups=keys, class_names=names, input_spec=spec,
        # without the training set, the validation mix stands in; say so in the notes
        training_subgroup_shares=training_shares or subgroup_shares(keys),
        notes={"imported": True, "validation_size": len(y),
               "training_shares_source": "given" if training_shares else "validation mix"},
        embeddings=embeddings, regions=min(32, len(y)),
    )
    return save_to_store(name, scripted, profile, labels={"role": "imported", "owner": "classguard"},
                         reference=reference_rows(logits, y, keys))


def add_arguments(parser: Any) -> None:
    parser.add_argument("name", help="model name in the store, e.g. my-classifier")
    source = parser.add_argument_group("model (one of)")
    source.add_argument("--torchscript", type=Path)
    source.add_argument("--state-dict", type=Path)
    source.add_argument("--module", help="pkg.module:Class for --state-dict")
    source.add_argument("--module-kwargs", type=json.loads, default={}, help="JSON keyword arguments for Class")
    data = parser.add_argument_group("labelled validation set (one of)")
    data.add_argument("--val-npz", type=Path)
    data.add_argument("--val-dir", type=Path)
    spec = parser.add_argument_group("input")
    spec.add_argument("--labels", type=lambda s: s.split(","), help="class names in output order, comma-separated")
    spec.add_argument("--input-size", help="HEIGHTxWIDTH the model takes (default: the validation images' most "
                                           "common size)")
    spec.add_argument("--channels", type=int, choices=(1, 3),
                      help="default: 3 when any validation image has colour, else 1")
    spec.add_argument("--mean", type=lambda s: [float(v) for v in s.split(",")],
                      help="per channel, subtracted from pixels scaled to [0, 1] (default: 0 for each channel)")
    spec.add_argument("--std", type=lambda s: [float(v) for v in s.split(",")],
                      help="per channel, divides them after (default: 1 for each channel)")
    spec.add_argument("--training-shares", help="subgroup shares of the training set, "
                                                "e.g. 'capture=scanner:0.97,capture=phone:0.03'")
    from ops.commands.init import add_write_arguments

    add_write_arguments(parser.add_argument_group("configuration (`classguard init`)"), required=False)


def input_size(text: str | None) -> tuple[int | None, int | None]:
    if text is None:
        return None, None
    height, _, width = text.lower().partition("x")
    if not (height.isdigit() and width.isdigit()) or not 1 <= int(height) <= 4096 or not 1 <= int(width) <= 4096:
        raise ValueError(f"--input-size is HEIGHTxWIDTH, e.g. 28x28, not {text!r}")
    return int(height), int(width)


def run(args: Any) -> int:
    height, width = input_size(args.input_size)
    tag = import_model(
        args.name, torchscript=args.torchscript, state_dict=args.state_dict, module=args.module,
        module_kwargs=args.module_kwargs, val_npz=args.val_npz, val_dir=args.val_dir, labels=args.labels,
        height=height, width=width, channels=args.channels, mean=args.mean, std=args.std,
        training_shares=parse_shares(args.training_shares),
    )
    print(tag)
    if args.out is not None:
        from ops.commands.init import report, write_config

        report(write_config(f"{args.name}:latest", args.out, derive=dict(args.derive), force=args.force))
    return 0
