"""`bentoml build` for a checkout whose path has a dot-folder in it (a clone under ~/.cache/...).

BentoML 1.4 refuses to read a bentofile.yaml (and its requirements file) whose resolved path has
a component starting with '.': "ValueError: Accessing hidden files is not allowed". This copies
the checkout, less what a Bento never holds (.git, .venv, the model store, caches), into a plain
temporary folder and runs `bentoml build` there, so bentofile.yaml's own include list still picks
the files, README.md included. The Bento goes to BENTOML_HOME as usual (the Makefile sets it to
the checkout's .bentoml); the copy is removed afterwards.

    python -m harness.build_check [bentoml build options]    # what `make build` runs there
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# top-level entries left out of the copy: version control, the virtual environment, the model
# store and what tests, training and benchmarks write
SKIP_TOP = {".git", ".venv", "venv", ".bentoml", ".pytest_cache", ".schemathesis", ".gl", "artifacts", "var",
            "build"}


def hidden_component(path: str | os.PathLike) -> str | None:
    """The first component of `path` (resolved, as BentoML resolves it) that starts with '.'."""
    return next((part for part in Path(path).resolve().parts if part.startswith(".")), None)


def stage(checkout: Path, dest: Path) -> Path:
    """Copy `checkout` (less SKIP_TOP, egg-info and bytecode) to the new folder `dest`."""
    checkout = Path(checkout).resolve()

    def ignore(folder: str, names: list[str]) -> set[str]:
        top = Path(folder).resolve() == checkout
        return {n for n in names if n == "__pycache__" or n.endswith(".pyc")
                or (top and (n in SKIP_TOP or n.endswith(".egg-info")))}

    shutil.copytree(checkout, dest, ignore=ignore, symlinks=True)
    return dest


def bentoml_executable() -> str:
    beside = Path(sys.executable).with_name("bentoml")
    return str(beside) if beside.exists() else (shutil.which("bentoml") or "bentoml")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    checkout = Path.cwd().resolve()
    if not (checkout / "bentofile.yaml").is_file():
        print(f"build: no bentofile.yaml in {checkout}; run this from the classguard checkout", file=sys.stderr)
        return 2
    bentoml = bentoml_executable()
    env = dict(os.environ)
    if env.get("BENTOML_HOME"):  # a relative store would move with the working directory
        env["BENTOML_HOME"] = str((checkout / env["BENTOML_HOME"]).resolve())
    if hidden_component(checkout) is None:
        return subprocess.call([bentoml, "build", *args], env=env)
    with tempfile.TemporaryDirectory(prefix="classguard-build-") as tmp:
        if (part := hidden_component(tmp)) is not None:
            print(f"build: {checkout} and the temporary folder {tmp} both have a dot-folder ({part!r}) in "
                  "their path, which `bentoml build` refuses; point TMPDIR at a plain folder "
                  "(e.g. `TMPDIR=/tmp make build`) or clone the repository to a path without one",
                  file=sys.stderr)
            return 2
        ctx = stage(checkout, Path(tmp) / "classguard")
        print(f"build: {checkout} has a dot-folder ({hidden_component(checkout)!r}) in its path, which "
              f"`bentoml build` refuses; building from a copy in {ctx} "
              f"(Bento store: {env.get('BENTOML_HOME') or 'BentoML default'})", file=sys.stderr)
        return subprocess.call([bentoml, "build", *args], cwd=ctx, env=env)


if __name__ == "__main__":
    raise SystemExit(main())
