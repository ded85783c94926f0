"""Build-time pages for the docs site (mkdocs `hooks:`), so nothing here is written twice:

- the configuration reference is generated from `Settings` (every field, its type, default,
  limits, description and environment variable), where `<!-- settings-reference -->` stands;
- the HTTP reference is rendered from docs/reference/openapi.json (kept equal to the live
  `/docs.json` by tests/service/test_openapi.py), where `<!-- openapi-reference -->` stands;
- the runbooks are read from dashboards/runbooks/ (their single source) as pages under
  runbooks/, and listed under the nav's "Runbooks" entry.

Nothing is fetched from the network; the models are not needed.
"""

from __future__ import annotations

import json
import sys
import types
import typing
from pathlib import Path

import annotated_types
import yaml
from mkdocs.structure.files import File
from pydantic import BaseModel, SecretStr
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parent.parent
RUNBOOKS = ROOT / "dashboards" / "runbooks"
ALERT_RULES = ROOT / "dashboards" / "prometheus" / "rules" / "alerts.yml"
OPENAPI = Path(__file__).resolve().parent / "reference" / "openapi.json"
SHIPPED_CONFIG = ROOT / "config" / "classguard.yaml"
SETTINGS_MARK = "<!-- settings-reference -->"
OPENAPI_MARK = "<!-- openapi-reference -->"
ENV_PREFIX = "CLASSGUARD_"


# ---- runbooks ----------------------------------------------------------------------------

def _alerts() -> dict[str, dict]:
    groups = yaml.safe_load(ALERT_RULES.read_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def _runbook_pages() -> dict[str, str]:
    """runbooks/<name>.md -> markdown; the folder's README.md is the section's index. An alert
    in the rules without any runbook gets a page that says so and shows its rule, so the
    index's link to it still leads somewhere (and the gap is visible); an alert whose rule's
    `runbook_url` names another alert's runbook gets a page that leads there."""
    pages = {}
    for path in sorted(RUNBOOKS.glob("*.md")):
        name = "index.md" if path.name == "README.md" else path.name
        pages[f"runbooks/{name}"] = path.read_text()
    for alert, rule in _alerts().items():
        if f"runbooks/{alert}.md" in pages:
            continue
        shared = Path(rule.get("annotations", {}).get("runbook_url", "")).name
        if f"runbooks/{shared}" in pages:
            # alerts that share one runbook (its title names them all): a page under the
            # alert's own name leads there
            pages[f"runbooks/{alert}.md"] = (
                f"# {alert}\n\n`{alert}` shares its runbook (the rule's `runbook_url`): "
                f"[{Path(shared).stem}]({shared}).\n")
        else:
            pages[f"runbooks/{alert}.md"] = (
                f"# {alert}\n\nNo runbook has been written for this alert yet "
                f"(`dashboards/runbooks/{alert}.md` does not exist). Its rule, from "
                f"`dashboards/prometheus/rules/alerts.yml`:\n\n```yaml\n"
                f"{yaml.safe_dump(rule, sort_keys=False, width=100)}```\n")
    return pages


def on_config(config, **kwargs):
    # the nav's "Runbooks" entry lists every runbook page, index first
    pages = _runbook_pages()
    # titled by alert name (a shared runbook's own title names several alerts)
    entries = [{"All runbooks": "runbooks/index.md"},
               *({Path(p).stem: p} for p in sorted(pages) if p != "runbooks/index.md")]

    def fill(items):
        for item in items or []:
            if isinstance(item, dict):
                for title, value in item.items():
                    if title == "Runbooks":
                        item[title] = entries
                    elif isinstance(value, list):
                        fill(value)

    fill(config["nav"])
    return config


def on_files(files, config, **kwargs):
    for uri, content in _runbook_pages().items():
        files.append(File.generated(config, uri, content=content))
    return files


def on_page_markdown(markdown, page, config, files, **kwargs):
    if SETTINGS_MARK in markdown:
        markdown = markdown.replace(SETTINGS_MARK, settings_reference())
    if OPENAPI_MARK in markdown:
        markdown = markdown.replace(OPENAPI_MARK, openapi_reference(json.loads(OPENAPI.read_text())))
    return markdown


# ---- configuration reference -------------------------------------------------------------

def _type_name(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args if a is not type(None)) + " or unset"
    if origin in (list, tuple):
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return f"map of {_type_name(args[0])} to {_type_name(args[1])}"
    if annotation is SecretStr:
        return "secret string"
    if annotation is Path:
        return "path"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "table"
    return getattr(annotation, "__name__", str(annotation))


def _value(value) -> str:
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        return "set"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, Path):
        return f"`{value}`"
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", exclude_defaults=True)
    if isinstance(value, (list, dict)):
        value = [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value] \
            if isinstance(value, list) else value
        return f"`{json.dumps(value, separators=(', ', ': '))}`".replace("|", "\\|")
    return f"`{value}`"


def _default(field) -> str:
    if field.default_factory is not None:
        return _value(field.default_factory())
    if field.default is PydanticUndefined:
        return "required"
    return _value(field.default)


_BOUNDS = ((annotated_types.Ge, "ge", "≥ {}"), (annotated_types.Gt, "gt", "> {}"),
           (annotated_types.Le, "le", "≤ {}"), (annotated_types.Lt, "lt", "< {}"),
           (annotated_types.MinLen, "min_length", "at least {} item(s)"))


def _limits(field) -> str:
    return ", ".join(text.format(getattr(meta, attr)) for meta in field.metadata
                     for kind, attr, text in _BOUNDS if isinstance(meta, kind))


def _shipped(path: list[str], shipped: dict) -> str:
    node = shipped
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return ""
        node = node[key]
    return _value(node)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _item_model(annotation):
    """The model inside `dict[str, Model]` or `list[Model]`, with how its entries are named."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is dict and isinstance(args[1], type) and issubclass(args[1], BaseModel):
        return args[1], ".<name>"
    if origin is list and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0], "[]"
    return None, ""


def _rows(model: type[BaseModel], path: list[str], env: str | None, shipped: dict, missing: list[str]):
    """Yield (key, type, default, shipped, limits, env, description) rows, nested models walked."""
    for name, field in model.model_fields.items():
        key_path = [*path, name]
        key = ".".join(key_path)
        variable = f"{env}{name.upper()}" if env else None
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _rows(annotation, key_path, f"{variable}__" if variable else None, shipped, missing)
            continue
        description = field.description or ""
        if not description:
            missing.append(key)
        yield (key, _type_name(annotation), _default(field), _shipped(key_path, shipped), _limits(field),
               f"`{variable}`" if variable else "(inside the JSON above)", description)
        item, suffix = _item_model(annotation)
        if item is not None:
            # entries of a map or list are set as one JSON value of the variable above
            yield from _rows(item, [f"{key}{suffix}"], None, {}, missing)


def settings_reference(missing: list[str] | None = None) -> str:
    """Markdown tables of every `Settings` field, one table per section."""
    sys.path.insert(0, str(ROOT)) if str(ROOT) not in sys.path else None
    from core.config import Settings

    missing = [] if missing is None else missing
    shipped = yaml.safe_load(SHIPPED_CONFIG.read_text()) or {}
    sections: dict[str, list[tuple]] = {"": []}
    intros: dict[str, str] = {}
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            sections[name] = list(_rows(annotation, [name], f"{ENV_PREFIX}{name.upper()}__", shipped, missing))
            intros[name] = " ".join((annotation.__doc__ or "").split())
        else:
            sections[""].extend(_rows(_Only(name, Settings), [], ENV_PREFIX, shipped, missing))
    out = []
    head = "| key and environment variable | type and limits | default | meaning |\n|---|---|---|---|\n"
    for section, rows in sections.items():
        out.append(f"### `{section}`\n" if section else "### Top level\n")
        if intros.get(section):
            out.append(intros[section] + "\n")
        out.append(head + "".join(
            f"| `{key}`<br>{env} | {typ}{', ' + lim if lim else ''} | {_cell(default)}"
            f"{'<br>shipped file: ' + _cell(ship) if ship and ship != default else ''} | {_cell(desc)} |\n"
            for key, typ, default, ship, lim, env, desc in rows))
    return "\n".join(out)


class _Only:
    """One top-level field of `Settings` seen as a model of its own (for `_rows`)."""

    def __init__(self, name: str, settings):
        self.model_fields = {name: settings.model_fields[name]}


# ---- HTTP reference ------------------------------------------------------------------------

def _schema_name(schema: dict) -> str:
    if "$ref" in schema:
        target = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{target}](#schema-{target.lower()})"
    if "anyOf" in schema or "oneOf" in schema:
        return " or ".join(_schema_name(s) for s in schema.get("anyOf", schema.get("oneOf")))
    kind = schema.get("type", "object")
    if kind == "object" and schema.get("title"):
        return f"object `{schema['title']}`"
    if kind == "array":
        return f"array of {_schema_name(schema.get('items', {}))}"
    if "format" in schema:
        return f"{kind} ({schema['format']})"
    return str(kind)


def _fields(schema: dict) -> str:
    required = set(schema.get("required", []))
    return "| field | type | required | description |\n|---|---|---|---|\n" + "".join(
        f"| `{name}` | {_schema_name(field)} | {'yes' if name in required else 'no'} | "
        f"{_cell(field.get('description', field.get('title', '')))} |\n"
        for name, field in schema.get("properties", {}).items())


def openapi_reference(document: dict) -> str:
    """Markdown for every operation and schema of an OpenAPI 3 document."""
    info = document.get("info", {})
    version = f" version `{info['version']}`" if info.get("version") not in (None, "None", "") else ""
    out = [f"OpenAPI {document.get('openapi', '?')}, *{info.get('title', '')}*{version}.\n"]
    for path, operations in document.get("paths", {}).items():
        for method, op in operations.items():
            if not isinstance(op, dict):
                continue
            out.append(f"### `{method.upper()} {path}`\n")
            text = op.get("description") or op.get("summary")
            if text:
                out.append(text.strip() + "\n")
            if op.get("tags"):
                out.append("Tags: " + ", ".join(f"`{t}`" for t in op["tags"]) + "\n")
            params = op.get("parameters", [])
            if params:
                out.append("| parameter | in | type | required | description |\n|---|---|---|---|---|\n" + "".join(
                    f"| `{p['name']}` | {p.get('in', '')} | {_schema_name(p.get('schema', {}))} | "
                    f"{'yes' if p.get('required') else 'no'} | {_cell(p.get('description', ''))} |\n"
                    for p in params))
            body = op.get("requestBody", {}).get("content", {})
            if body:
                out.append("Request body:\n\n" + "".join(
                    f"- `{ctype}`: {_schema_name(spec.get('schema', {}))}\n" for ctype, spec in body.items()))
                out.extend(_fields(spec.get("schema", {})) for spec in body.values() if spec.get("schema", {}).get("properties"))
            responses = op.get("responses", {})
            if responses:
                out.append("| response | description | content |\n|---|---|---|\n" + "".join(
                    f"| {code} | {_cell(r.get('description', ''))} | "
                    + ", ".join(f"`{c}` {_schema_name(s.get('schema', {}))}" for c, s in r.get("content", {}).items())
                    + " |\n" for code, r in responses.items()))
                for code, r in responses.items():
                    for spec in r.get("content", {}).values():
                        if spec.get("schema", {}).get("properties"):
                            out.append(f"Response {code}:\n\n" + _fields(spec["schema"]))
    schemas = document.get("components", {}).get("schemas", {})
    if schemas:
        out.append("## Schemas\n")
    for name, schema in schemas.items():
        out.append(f'### {name} {{ #schema-{name.lower()} }}\n')
        if schema.get("description"):
            out.append(schema["description"].strip() + "\n")
        if schema.get("properties"):
            out.append(_fields(schema))
        else:
            out.append(f"Type: {_schema_name(schema)}\n")
    return "\n".join(out)
