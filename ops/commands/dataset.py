"""`classguard dataset export`: captured inputs with their true labels, as training data.

    classguard dataset export --region r05 [--region r09] [--subgroup S] [--since 1d] [--until ..]
                              [--labelled] -o DIR [--db URL | --url URL]

DIR gets a folder per class (the true label from POST /feedback) of PNGs named by request id,
the layout `classguard import-model --val-dir` and `python -m training.train --extra` read;
`manifest.jsonl` (a line per input, oldest first: request id, path, label, answered label,
model and version, region, subgroup, time) and `subgroups.csv` (path -> subgroup attributes).
Inputs without a label go to `_unlabelled/` (not a class: both readers skip `_` folders)
unless --labelled. Nothing is written outside DIR; a DIR that holds other files is refused, and
exporting again into DIR first removes the images the earlier export listed (an input erased
since then must not stay behind as training data). Inputs evicted or erased while the export
runs are skipped and counted.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

from ops.common import admin_call, open_log

HELP = "export captured inputs and their labels as a training set"
PARSER = {"description": __doc__, "formatter_class": argparse.RawDescriptionHelpFormatter}
SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,80}$")  # a class folder or file name written as it is
PAGE = 1_000
UNLABELLED = "_unlabelled"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("export",))
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--db", help="SQLite file or postgresql:// URL (default: fleet.database_url, else log.path)")
    source.add_argument("--url", help="a running service (admin token in CLASSGUARD_ADMIN_TOKEN) instead of the store")
    parser.add_argument("--region", action="append", help="a region of the primary's embedding (repeatable)")
    parser.add_argument("--subgroup")
    parser.add_argument("--model")
    parser.add_argument("--since", help="15m, 2h, 1d or Unix seconds")
    parser.add_argument("--until")
    parser.add_argument("--labelled", action="store_true", help="only inputs with a true label")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the folder to write")


def run(args: argparse.Namespace) -> int:
    out = prepare_folder(args.output)
    source = ApiSource(args.url) if args.url else StoreSource(args.db)
    written, unlabelled, vanished = 0, 0, 0
    totals = {"answers": 0, "captured": 0, "labelled": 0, "captured_and_labelled": 0}
    with open(out / "manifest.jsonl", "w") as manifest, open(out / "subgroups.csv", "w", newline="") as table:
        attributes = csv.writer(table)
        attributes.writerow(["path", "subgroup"])
        for region in dict.fromkeys(args.region or [None]):  # a region named twice is exported once
            filters = {"region": region, "subgroup": args.subgroup, "model": args.model, "since": args.since,
                       "until": args.until}
            for key, n in source.totals(filters).items():
                totals[key] += n
            for row in source.rows(filters, labelled=args.labelled):
                folder = class_folder(row["truth"]) if row["truth"] is not None else UNLABELLED
                path = inside(out, Path(folder) / f"{safe_file(row['request_id'])}.png")
                image = source.png(row["request_id"])
                if image is None:  # evicted (oldest first: what an export reads first) or erased meanwhile
                    vanished += 1
                    continue
                path.parent.mkdir(exist_ok=True)
                path.write_bytes(image)
                relative = path.relative_to(out).as_posix()
                manifest.write(json.dumps({"request_id": row["request_id"], "path": relative, "label": row["truth"],
                                           "answered": row["predicted"], "model": row["model"],
                                           "model_version": row["model_version"], "region": row["region"],
                                           "subgroup": row["subgroup"], "ts": row["ts"]}) + "\n")
                if row["truth"] is not None:
                    attributes.writerow([relative, row["subgroup"]])
                    written += 1
                else:
                    unlabelled += 1
    print(f"{args.output}: {written} labelled inputs in class folders"
          + (f", {unlabelled} without a label in {UNLABELLED}/" if unlabelled else "")
          + (f"; {vanished} evicted or erased while exporting, not written" if vanished else ""))
    print(f"of {totals['answers']} logged answers matching: {totals['captured']} kept their input, "
          f"{totals['answers'] - totals['captured']} had no captured input; {totals['labelled']} have a label, "
          f"{totals['captured'] - totals['captured_and_labelled']} captured inputs had no label"
          + (" (not exported: --labelled)" if args.labelled else ""))
    return 0


def prepare_folder(path: Path) -> Path:
    """DIR, made if missing; refused when it holds anything but an earlier export's files, whose
    images are removed (an input erased since must not stay behind as training data)."""
    out = path.resolve()
    if out.exists() and not out.is_dir():
        raise ValueError(f"{path} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not (out / "manifest.jsonl").exists():
        raise ValueError(f"{path} is not empty and holds no earlier export (manifest.jsonl): choose an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    clear_previous(out)
    return out


def clear_previous(out: Path) -> int:
    """Delete the PNGs an earlier export listed in its manifest (each checked to lie inside
    `out`), then the class folders left empty; how many files went."""
    manifest = out / "manifest.jsonl"
    if not manifest.exists():
        return 0
    gone = 0
    for line in manifest.read_text().splitlines():
        try:
            listed = json.loads(line)["path"]
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{manifest} is not an export's manifest: choose an empty folder") from None
        target = inside(out, Path(str(listed)))
        if target.suffix == ".png" and target.is_file():
            target.unlink()
            gone += 1
    for folder in out.iterdir():
        if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
            folder.rmdir()
    return gone


def class_folder(label: str) -> str:
    """A class name as a folder name; one that could leave DIR or hide is refused."""
    if not SAFE_NAME.fullmatch(label) or set(label) == {"."} or label.startswith("_"):
        raise ValueError(f"class name {label!r} cannot be a folder name: only A-Z a-z 0-9 . _ - (not all dots, "
                         "not starting with _)")
    return label


def safe_file(request_id: str) -> str:
    if not SAFE_NAME.fullmatch(request_id) or set(request_id) == {"."}:
        raise ValueError(f"request id {request_id!r} cannot be a file name")
    return request_id.replace(":", "_")


def inside(root: Path, relative: Path) -> Path:
    """root / relative, refused if it resolves outside root (a symlinked folder, say)."""
    target = (root / relative).resolve()
    if not target.is_relative_to(root):
        raise ValueError(f"refusing to write {target}: outside {root}")
    return target


class StoreSource:
    def __init__(self, db: str | None) -> None:
        self.conn = open_log(db)

    def _filters(self, filters: dict) -> dict:
        from store.prediction_log import parse_since

        return {**filters, "since": parse_since(filters["since"]), "until": parse_since(filters["until"])}

    def totals(self, filters: dict) -> dict[str, int]:
        from store import inputs

        return inputs.totals(self.conn, **self._filters(filters))

    def rows(self, filters: dict, labelled: bool) -> Iterator[dict[str, Any]]:
        from store import inputs

        after = None
        while True:
            page = inputs.query(self.conn, **self._filters(filters), labelled=labelled, after=after, limit=PAGE)
            yield from page
            if len(page) < PAGE:
                return
            after = (page[-1]["ts"], page[-1]["request_id"])  # holds even when that input and its answer are gone

    def png(self, request_id: str) -> bytes | None:
        """The input as PNG; None when it is no longer stored."""
        from store import inputs

        row = inputs.get(self.conn, request_id)
        return None if row is None else inputs.as_png(row)


class ApiSource:
    def __init__(self, url: str) -> None:
        self.url = url

    def _query(self, filters: dict, **more: Any) -> str:
        return urllib.parse.urlencode({k: v for k, v in {**filters, **more}.items() if v is not None})

    def totals(self, filters: dict) -> dict[str, int]:
        return json.loads(admin_call(self.url, "inputs?" + self._query(filters, limit=1, totals=1)))["totals"]

    def rows(self, filters: dict, labelled: bool) -> Iterator[dict[str, Any]]:
        after = None
        while True:
            page = json.loads(admin_call(self.url, "inputs?" + self._query(
                filters, labelled="1" if labelled else None, after=after, limit=PAGE)))
            yield from page["inputs"]
            if page["next_after"] is None:
                return
            after = page["next_after"]

    def png(self, request_id: str) -> bytes | None:
        return admin_call(self.url, f"inputs/{urllib.parse.quote(request_id, safe='')}", missing_ok=True) or None
