"""Bring your own model: import a torch classifier and profile it on your validation set.

    classguard import-model NAME (--torchscript FILE | --state-dict FILE --module pkg.mod:Class)
                            (--val-npz FILE | --val-dir DIR) [options]

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
    height: int = 8,
    width: int = 8,
    channels: int = 1,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    training_shares: dict[str, float] | None = None,
) -> str:
    import torch

    from core.keys import subgroup_key
    from monitors.reference import InputSpec, build_profile, subgroup_shares
    from runtime.preprocess import normalise, to_unit_array
    from store.model_store import reference_rows, save_to_store

    spec = InputSpec(height=height, width=width, channels=channels,
                     mean=tuple(mean or (0.0,) * channels), std=tuple(std or (1.0,) * channels))
    if (val_npz is None) == (val_dir is None):
        raise ValueError("give exactly one of --val-npz and --val-dir")
    images, y, subgroups, names = read_npz(val_npz, labels) if val_npz else read_dir(val_dir, labels)
    if len(images) == 0:
        raise ValueError("the validation set is empty")
    batch = np.stack([normalise(to_unit_array(im, spec), spec) for im in images]).astype(np.float32)
    scripted = load_module(torchscript, state_dict, module, module_kwargs or {}, torch.from_numpy(batch[:1]))
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
    spec.add_argument("--input-size", default="8x8", help="HEIGHTxWIDTH the model takes")
    spec.add_argument("--channels", type=int, default=1, choices=(1, 3))
    spec.add_argument("--mean", type=lambda s: [float(v) for v in s.split(",")])
    spec.add_argument("--std", type=lambda s: [float(v) for v in s.split(",")])
    spec.add_argument("--training-shares", help="subgroup shares of the training set, "
                                                "e.g. 'capture=scanner:0.97,capture=phone:0.03'")


def run(args: Any) -> int:
    height, _, width = args.input_size.lower().partition("x")
    tag = import_model(
        args.name, torchscript=args.torchscript, state_dict=args.state_dict, module=args.module,
        module_kwargs=args.module_kwargs, val_npz=args.val_npz, val_dir=args.val_dir, labels=args.labels,
        height=int(height), width=int(width), channels=args.channels, mean=args.mean, std=args.std,
        training_shares=parse_shares(args.training_shares),
    )
    print(tag)
    return 0
