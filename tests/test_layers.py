"""Every package imports only packages below it: the shared vocabulary at the bottom, the
BentoML shell and the tools on top. `pytest -s tests/test_layers.py` prints the import graph."""

from __future__ import annotations

import ast
import collections
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Lowest first. A package may import the packages of the layers below its own, never one of its
# own layer (besides itself) or above.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("core",),  # configuration, metrics, error reasons, request ids, subgroup keys, fleet time
    # pure numpy, seeing numbers, probability vectors and records; dashboards' boards and rules
    # name core's metrics and nothing else of the code
    ("monitors", "guardrails", "dashboards"),
    ("store",),  # what is persisted: the prediction log, feedback, chains, fleet windows, models
    # the request path without BentoML; training builds the models and their reference profiles
    # from monitors and store, and serves nothing
    ("runtime", "training"),
    ("service",),  # the BentoML shell: HTTP in, runtime, HTTP out
    # operators' commands, and the manifests rendered from core's configuration and the files of
    # dashboards/ and config/ (read as files, not imported)
    ("ops", "deploy"),
    ("harness",),  # servers, databases and Prometheus started for the demos, tests and benchmarks
    ("benchmarks",),  # measurements, built on harness
    ("docs",),  # the docs site's build hook: reads core's Settings to write the configuration page
)
# Third-party packages a layer must not import: the numbers layers run without BentoML or torch,
# and the vocabulary renders no HTTP (service/http_errors.py does).
FORBIDDEN = {
    "core": {"bentoml", "_bentoml_impl", "torch", "starlette"},
    "monitors": {"bentoml", "_bentoml_impl", "torch"},
    "guardrails": {"bentoml", "_bentoml_impl", "torch"},
}
RANK = {package: rank for rank, layer in enumerate(LAYERS) for package in layer}


def imports(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, top-level package) of every import in the module, at any depth (in functions too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, package if node.level else node.module.split(".")[0]))
    return found


def modules(root: Path, packages) -> list[tuple[str, Path]]:
    return [(package, path) for package in packages for path in sorted((root / package).rglob("*.py"))]


def import_graph(root: Path, packages) -> dict[str, collections.Counter]:
    """package -> the project's packages it imports, with how many import statements name each."""
    graph = {package: collections.Counter() for package in packages}
    for package, path in modules(root, packages):
        for _, target in imports(path, package):
            if target in RANK and target != package:
                graph[package][target] += 1
    return graph


def violations(root: Path, packages) -> list[str]:
    found = []
    for package, path in modules(root, packages):
        where = path.relative_to(root)
        for line, target in imports(path, package):
            if target in FORBIDDEN.get(package, ()):
                found.append(f"{where}:{line}: {package} imports {target}")
            elif target in RANK and target != package and RANK[target] >= RANK[package]:
                found.append(f"{where}:{line}: {package} (layer {RANK[package]}) imports {target} "
                             f"(layer {RANK[target]})")
    return found


def repository_packages() -> list[str]:
    return sorted(p.name for p in REPO.iterdir()
                  if p.is_dir() and p.name != "tests" and not p.name.startswith(".") and any(p.glob("*.py")))


def render(graph) -> str:
    return "\n".join(f"{package:<11} -> " + (", ".join(f"{t} {n}" for t, n in sorted(targets.items())) or "nothing")
                     for package, targets in sorted(graph.items(), key=lambda item: (RANK[item[0]], item[0])))


def test_every_package_has_a_layer():
    """Every folder of the repository that holds Python code (tests aside) is placed in LAYERS."""
    assert set(repository_packages()) == set(RANK), set(repository_packages()) ^ set(RANK)


def test_no_package_imports_its_own_layer_or_above():
    """No module of the repository imports a package of its own layer or a higher one, and
    monitors/, guardrails/ and core/ import neither BentoML nor torch (core: nor starlette)."""
    packages = repository_packages()
    print("\n" + render(import_graph(REPO, packages)))
    assert violations(REPO, packages) == []


def plant(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


@pytest.fixture
def clean_tree(tmp_path):
    plant(tmp_path, {
        "core/names.py": "import json\n",
        "monitors/mean.py": "from core import names\nimport numpy\n",
        "runtime/path.py": "from monitors.mean import x\nfrom . import other\n",
        "service/shell.py": "import bentoml\nfrom runtime import path\n",
    })
    return tmp_path


def test_the_checker_passes_a_clean_tree(clean_tree):
    """Downward, relative and third-party imports in a tree that keeps the layers are no violation."""
    assert violations(clean_tree, ["core", "monitors", "runtime", "service"]) == []


def test_the_checker_finds_each_kind_of_violation(clean_tree):
    """An upward import (top level, or inside a function), an import within one layer, and torch
    or BentoML in a numbers layer are each reported with their file and line."""
    plant(clean_tree, {
        "core/up.py": "import json\nfrom runtime.path import x\n",
        "store/log.py": "def write():\n    import service.shell\n",
        "guardrails/peek.py": "from monitors import mean\n",
        "monitors/deep/torchy.py": "def f():\n    import torch.nn as nn\n",
        "guardrails/serve.py": "import bentoml\n",
    })
    found = violations(clean_tree, ["core", "monitors", "guardrails", "store", "runtime", "service"])
    assert found == [
        "core/up.py:2: core (layer 0) imports runtime (layer 3)",
        "monitors/deep/torchy.py:2: monitors imports torch",
        "guardrails/peek.py:1: guardrails (layer 1) imports monitors (layer 1)",
        "guardrails/serve.py:1: guardrails imports bentoml",
        "store/log.py:2: store (layer 2) imports service (layer 4)",
    ]
