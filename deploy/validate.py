"""Validates rendered Kubernetes manifests offline, as the API server would take them.

    python -m deploy.validate [FOLDER ...]      # default: deploy/kubernetes

Built-in kinds go through `kubernetes-validate` (the Kubernetes OpenAPI schemas, strict: an
unknown field is an error, as `kubectl apply` reports with server-side field validation) for
every version in deploy.render.CLUSTER_VERSIONS. The Prometheus Operator's kinds
(ServiceMonitor, PrometheusRule, AlertmanagerConfig) have no schema there; they are read into the
models generated from the Operator's CRDs (`cloudcoil-models-prometheus-operator`), and a field
those models do not know is an error too. Any other kind is refused: nothing is applied unchecked.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from deploy.render import CLUSTER_VERSIONS, OUT

OPERATOR_GROUP = "monitoring.coreos.com"
# The schemas type resources as "int or string", so "lots" would pass them and fail at apply:
# Kubernetes' quantity grammar, decimal or binary suffixes (resource.Quantity).
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?([eE][0-9]+|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


@dataclass(frozen=True)
class Problem:
    where: str  # file and document: "base/monitoring.yaml PrometheusRule/classguard-rules"
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


def documents(folder: Path) -> list[tuple[str, dict]]:
    """(file relative to `folder`, document) for every YAML document under it, in path order."""
    out = []
    for path in sorted(folder.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                out.append((path.relative_to(folder).as_posix(), doc))
    return out


def unknown_fields(given: object, known: object, path: str = "") -> list[str]:
    """Paths present in `given` but absent from `known` (the model's dump of what it read)."""
    if isinstance(given, dict):
        if not isinstance(known, dict):
            return [path or "."]
        found = []
        for key, value in given.items():
            where = f"{path}.{key}" if path else str(key)
            found += [where] if key not in known else unknown_fields(value, known[key], where)
        return found
    if isinstance(given, list) and isinstance(known, list):
        return [f for i, (g, k) in enumerate(zip(given, known)) for f in unknown_fields(g, k, f"{path}[{i}]")]
    return []


def _operator_model(api_version: str, kind: str):
    from cloudcoil.models.prometheus_operator import v1, v1alpha1  # large modules: loaded only when needed

    module = {"v1": v1, "v1alpha1": v1alpha1}.get(api_version.split("/", 1)[1])
    model = getattr(module, kind, None) if module else None
    return model if isinstance(model, type) and hasattr(model, "model_validate") else None


def validate_operator(doc: dict) -> list[str]:
    model = _operator_model(doc["apiVersion"], doc["kind"])
    if model is None:
        return [f"no Prometheus Operator schema for {doc['apiVersion']} {doc['kind']}"]
    from pydantic import ValidationError

    try:
        parsed = model.model_validate(doc)
    except ValidationError as error:
        return [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()]
    known = parsed.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return [f"unknown field {path}" for path in unknown_fields(doc, known)]


def bad_quantities(doc: dict) -> list[str]:
    """Container requests and limits that are not Kubernetes quantities."""
    pod = doc.get("spec", {}).get("template", {}).get("spec", {}) if doc.get("kind") != "Pod" else doc.get("spec", {})
    found = []
    for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
        for part, amounts in container.get("resources", {}).items():
            for resource, amount in (amounts or {}).items():
                if not QUANTITY.match(str(amount)):
                    found.append(f"{container.get('name')}: resources.{part}.{resource} {amount!r} is not a "
                                 "Kubernetes quantity")
    return found


def validate_builtin(doc: dict, version: str) -> list[str]:
    import kubernetes_validate

    if quantities := bad_quantities(doc):
        return quantities

    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.SchemaNotFoundError as error:
        return [error.message]
    except kubernetes_validate.ValidationError as error:
        where = ".".join(map(str, error.path)) or "."
        return [f"Kubernetes {version}: {where}: {error.message}"]
    return []


def validate(folder: Path, versions: tuple[str, ...] = CLUSTER_VERSIONS) -> tuple[int, list[Problem]]:
    """(documents checked, problems found) for every manifest under `folder`."""
    docs = documents(folder)
    problems = []
    for name, doc in docs:
        if not isinstance(doc, dict) or not {"apiVersion", "kind", "metadata"} <= doc.keys():
            problems.append(Problem(name, "not a Kubernetes object (apiVersion, kind and metadata are required)"))
            continue
        where = f"{name} {doc['kind']}/{doc['metadata'].get('name')}"
        if doc["apiVersion"].startswith(OPERATOR_GROUP + "/"):
            reasons = validate_operator(doc)
        else:
            reasons = [r for version in versions for r in validate_builtin(doc, version)]
        problems += [Problem(where, reason) for reason in reasons]
    return len(docs), problems


def main(argv: list[str] | None = None) -> int:
    folders = [Path(p) for p in (sys.argv[1:] if argv is None else argv)] or [OUT]
    failed = False
    for folder in folders:
        count, problems = validate(folder)
        for problem in problems:
            print(problem, file=sys.stderr)
        if count == 0:
            print(f"{folder}: no manifests found", file=sys.stderr)
        failed |= bool(problems) or count == 0
        print(f"{folder}: {count} objects, {len(problems)} problems (Kubernetes {', '.join(CLUSTER_VERSIONS)}; "
              "Prometheus Operator CRD models)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
