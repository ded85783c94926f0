"""`classguard init TAG -o DIR`: a starting configuration for a stored model, read from its profile.

    classguard init my-colors:latest -o my-colors/ [--derive camera=runtime.derived:camera_maker]
    CLASSGUARD_CONFIG=my-colors/classguard.yaml bentoml serve

Writes DIR/classguard.yaml (the model as primary, the subgroup attributes its validation set
had, region monitors when it has a codebook, the known confusions its validation confusion
matrices suggest, with their rates) and DIR/guardrails.yaml (`allow_all` active, and examples
naming its own classes and subgroups). Both are validated before they are written: serving
with them needs no other setting. The shipped config/ is the incident's and is not touched.
"""

from __future__ import annotations

import argparse
import datetime
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

HELP = "write a starting configuration for a stored model"
PARSER = {"description": __doc__, "formatter_class": argparse.RawDescriptionHelpFormatter}
SUGGESTED_PAIRS = 5


@dataclass(frozen=True)
class Confusion:
    """One pair of classes the model confuses on its validation set: the worst subgroup's rate,
    and the rate in each subgroup (`all` included) as (answered as target, true source)."""

    source: str
    target: str
    worst: str  # the subgroup key where the rate is highest
    rate: float
    counts: Mapping[str, tuple[int, int]]


def subgroup_values(keys: Sequence[str]) -> dict[str, list[str]]:
    """Attribute -> the values the validation set had (`other`, a row without one, left out)."""
    from core.keys import parse_subgroup_key

    values: dict[str, set[str]] = {}
    for key in keys:
        for attribute, value in parse_subgroup_key(key).items():
            values.setdefault(attribute, set())
            if value != "other":
                values[attribute].add(value)
    return {a: sorted(v) for a, v in sorted(values.items()) if v}


def suggest_confusions(profile: Any, limit: int = SUGGESTED_PAIRS) -> list[Confusion]:
    """The pairs with the highest rate in any subgroup (`all` when the set has no subgroups):
    the share of a true class's images answered as the other class. Ties: more images first."""
    labels = profile.labels
    keys = [k for k in profile.subgroups if k != "all"] or ["all"]
    found = []
    for i, source in enumerate(labels):
        for j, target in enumerate(labels):
            if i == j:
                continue
            counts = {key: (s.confusion_matrix[i][j], sum(s.confusion_matrix[i]))
                      for key, s in profile.subgroups.items()}
            rates = {k: counts[k][0] / counts[k][1] for k in keys if counts[k][1] and counts[k][0]}
            if rates:
                worst = max(rates, key=lambda k: (rates[k], counts[k][0]))
                found.append(Confusion(source, target, worst, rates[worst], counts))
    found.sort(key=lambda c: (-c.rate, -c.counts[c.worst][0], c.source, c.target))
    return found[:limit]


def _rates(c: Confusion) -> str:
    parts = [f"{k}: {c.counts[k][0] / c.counts[k][1]:.1%} ({c.counts[k][0]} of {c.counts[k][1]})"
             for k in sorted(c.counts, key=lambda k: (k == "all", k)) if c.counts[k][1]]
    return "; ".join(parts)


def _q(text: str) -> str:
    return json.dumps(text)  # a JSON string is a YAML string, whatever it holds


def render_config(tag: str, profile: Any, out: Path, attributes: Mapping[str, list[str]],
                  derive: Mapping[str, str], confusions: Sequence[Confusion]) -> str:
    name, home = tag.split(":")[0], out.resolve()
    validation = profile.subgroups["all"].count
    lines = [
        f"# classguard configuration for {name}, written by `classguard init {tag}` on "
        f"{datetime.date.today().isoformat()}",
        f"# from its validation profile ({validation} images, {len(profile.labels)} classes). Serve with:",
        f"#   CLASSGUARD_CONFIG={out / 'classguard.yaml'} bentoml serve",
        "# Every key not here keeps its default (docs: configuration reference).",
        "models:",
        f"  primary: {_q(tag)}",
        "  others: []   # models loaded beside it, for route and shadow guardrails (e.g. a retrained one)",
        "subgroups:",
    ]
    if not attributes:
        lines += ["  attributes: {}   # the validation set named none (subgroups.csv / subgroup_* arrays): one subgroup"]
    else:
        lines += ["  attributes:"]
        for attribute, values in attributes.items():
            counts = ", ".join(f"{v} {_count(profile, attribute, v)}" for v in values)
            lines += [f"    {attribute}:   # in the validation set: {counts}",
                      f"      values: [{', '.join(_q(v) for v in values)}]"]
            if attribute in derive:
                lines += [f"      derive: {_q(derive[attribute])}",
                          "      prefer: derived   # the image decides; a client's claim is checked and counted "
                          "(`client`: trust it)"]
            else:
                lines += ["      # derive: mypackage.derivers:function   # none: clients send it as `context` "
                          "(docs: subgroup derivers)",
                          "      prefer: client   # with a deriver, `derived` lets the image decide instead"]
    lines += ["monitors:"]
    if profile.regions is not None:
        lines += ["  regions: true   # the model exports `embed`: its profile has a codebook of regions"]
    else:
        lines += ["  regions: false   # the model exports no `embed`, so it has no codebook of regions"]
    if confusions:
        lines += ["  # suggested from the validation confusion matrices: the share of a true class's images",
                  "  # answered as another, per subgroup; keep the pairs to watch, delete the rest",
                  "  known_confusions:"]
        for c in confusions:
            lines += [f"    # {_shown(c.source)} answered as {_shown(c.target)}: {_rates(c)}",
                      f"    - {{source: {_q(c.source)}, target: {_q(c.target)}, margin: 0.3}}"]
    else:
        lines += ["  known_confusions: []   # the validation set shows no confusion between two classes"]
    lines += [
        "# this model's own files, beside this one (absolute: the service may start in another folder)",
        "guardrails:",
        f"  profiles_path: {_q(str(home / 'guardrails.yaml'))}",
        f"  audit_log: {_q(str(home / 'var' / 'guardrail-audit.jsonl'))}",
        "log:",
        f"  path: {_q(str(home / 'var' / 'predictions.sqlite'))}",
        "# capture:   # keep inputs to look at and retrain from: a privacy decision (docs: captured inputs)",
        "#   policy: stratified",
        "",
    ]
    return "\n".join(lines)


def _count(profile: Any, attribute: str, value: str) -> int:
    from core.keys import parse_subgroup_key

    return sum(s.count for key, s in profile.subgroups.items()
               if key != "all" and parse_subgroup_key(key).get(attribute) == value)


def worst_subgroup(profile: Any) -> str | None:
    """The subgroup key the model serves worst on its validation set (None: no subgroups)."""
    keys = [k for k in profile.subgroups if k != "all" and "=other" not in k]
    return min(keys, key=lambda k: (profile.subgroups[k].accuracy, k)) if keys else None


def render_profiles(tag: str, profile: Any, confusions: Sequence[Confusion]) -> str:
    name = tag.split(":")[0]
    worst = worst_subgroup(profile)
    where = f", subgroups: [{_q(worst)}]" if worst else ""
    lines = [
        f"# Guardrail profiles for {name}, written by `classguard init`. `active` is the chain at start-up;",
        "# swap at run time with `classguard guardrails apply PROFILE` (docs: guardrails). Each was",
        "# checked against this model's classes, subgroups and known confusions when written.",
        "active: allow_all",
        "profiles:",
        "  allow_all:",
        "    - {type: allow_all}",
    ]
    if worst:
        accuracy = profile.subgroups[worst].accuracy
        lines += [f"  # abstain when unsure, more strictly for {worst} ({accuracy:.1%} right on the validation set)",
                  "  abstain_when_unsure:",
                  f"    - {{type: abstain_below, threshold: 0.5, per_subgroup: {{{_q(worst)}: 0.7}}}}"]
    else:
        lines += ["  # abstain when unsure", "  abstain_when_unsure:", "    - {type: abstain_below, threshold: 0.5}"]
    if confusions:
        c = next((c for c in confusions if c.worst == worst), confusions[0])
        on = f"_{_profile_word(worst)}" if worst else ""
        lines += [f"  # 2015's fix: never emit {_shown(c.target)} where the model answers it for {_shown(c.source)} "
                  f"({c.rate:.1%} in {c.worst}), and abstain on the known confusions there",
                  f"  suppress_{_profile_word(c.target)}{on}:",
                  f"    - {{type: suppress_labels, labels: [{_q(c.target)}]{where}, floor: 0.6}}",
                  f"    - {{type: confusion_guard, action: abstain{where}}}"]
    if worst:
        lines += ["  # the real fix, once a model trained on representative data is imported and listed in",
                  f"  # models.others: answer {worst} with it",
                  f"  # route_{_profile_word(worst)}:",
                  f"  #   - {{type: route, target: {name}-retrained, subgroups: [{_q(worst)}], timeout_ms: 1000}}"]
    return "\n".join(lines) + "\n"


def _profile_word(text: str) -> str:
    """A piece of a profile name (ASCII letters, digits, `_.-`: what a profile name may hold)."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "_.-") else "_" for c in text)[:24]


def _shown(name: str) -> str:
    """A class name in a YAML comment: as it is when printable, else quoted (a newline in a
    folder name would otherwise end the comment and start YAML of its own)."""
    return name if name.isprintable() else _q(name)


def check(config_text: str, profiles_text: str, profile: Any) -> None:
    """Both files as the service will read them: every section validated, every profile compiled
    against what this configuration loads (so none names a class, subgroup or pair that is not)."""
    import yaml

    from core.config import MonitorsConfig, SubgroupsConfig
    from runtime.chain_config import ChainContext, Profiles, compile_chain
    from runtime.subgroups import SubgroupResolver

    config = yaml.safe_load(config_text)
    subgroups = SubgroupsConfig.model_validate(config["subgroups"])
    monitors = MonitorsConfig.model_validate(config["monitors"])
    profiles = Profiles.model_validate(yaml.safe_load(profiles_text))
    codebook = profile.codebook() if monitors.regions else None
    regions = frozenset(codebook.names()) if codebook is not None else frozenset()
    context = ChainContext(models=frozenset({config["models"]["primary"].split(":")[0]}),
                           subgroups=frozenset(SubgroupResolver(subgroups.attributes).keys()),
                           labels=frozenset(profile.labels), pairs=frozenset(p.name for p in monitors.known_confusions),
                           regions=regions)
    for name, specs in profiles.profiles.items():
        compile_chain(specs, name, context)


def write_config(tag: str, out: Path, *, derive: Mapping[str, str] | None = None, force: bool = False,
                 pairs: int = SUGGESTED_PAIRS) -> list[Path]:
    """DIR/classguard.yaml and DIR/guardrails.yaml for the stored model `tag`; the paths written."""
    from core.config import SubgroupsConfig
    from monitors.reference import ReferenceProfile
    from runtime.models import find_stored
    from store.model_store import PROFILE_KEY

    tag = tag if ":" in tag else f"{tag}:latest"
    profile = ReferenceProfile.from_dict(find_stored(tag).info.metadata[PROFILE_KEY])
    attributes = subgroup_values(list(profile.subgroups))
    derive = dict(derive or {})
    unknown = sorted(set(derive) - set(attributes))
    if unknown:
        raise ValueError(f"--derive names attribute(s) the validation set does not have: {', '.join(unknown)}; "
                         f"it has: {', '.join(attributes) or 'none'}")
    from runtime.subgroups import load_callable

    for path in derive.values():
        try:
            load_callable(path)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ValueError(f"--derive {path}: cannot be imported ({type(exc).__name__}: {exc})") from None
    confusions = suggest_confusions(profile, pairs)
    try:
        # the names first: attribute names and values are written into YAML as they are, so
        # one that could not be a metric label (or could break a line) never reaches the text
        SubgroupsConfig.model_validate({"attributes": {a: {"values": v} for a, v in attributes.items()}})
        config_text = render_config(tag, profile, out, attributes, derive, confusions)
        profiles_text = render_profiles(tag, profile, confusions)
        check(config_text, profiles_text, profile)
    except ValueError as exc:  # e.g. a subgroup value no metric label may carry: say which, write nothing
        first = str(exc).strip().splitlines()
        raise ValueError("the validation set's names do not make a valid configuration: "
                         + " ".join(line.strip() for line in first[:4])[:400]
                         + "; rename them in subgroups.csv / subgroup_* arrays or the class folders") from None
    paths = [out / "classguard.yaml", out / "guardrails.yaml"]
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise ValueError(f"{', '.join(existing)} exist; give --force to replace them")
    out.mkdir(parents=True, exist_ok=True)
    paths[0].write_text(config_text)
    paths[1].write_text(profiles_text)
    return paths


def derive_option(text: str) -> tuple[str, str]:
    attribute, _, path = text.partition("=")
    if not attribute or ":" not in path:
        raise argparse.ArgumentTypeError(f"--derive is ATTRIBUTE=package.module:function, not {text!r}")
    return attribute, path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tag", help="a stored model, e.g. my-colors:latest")
    add_write_arguments(parser, required=True)


def add_write_arguments(parser: Any, *, required: bool) -> None:
    flag = ("-o", "--out") if required else ("--write-config",)
    parser.add_argument(*flag, dest="out", type=Path, required=required, metavar="DIR",
                        help="folder for classguard.yaml and guardrails.yaml")
    parser.add_argument("--derive", type=derive_option, action="append", default=[], metavar="ATTRIBUTE=MOD:FUNC",
                        help="a subgroup deriver for one of the validation set's attributes (repeatable)")
    parser.add_argument("--force", action="store_true", help="replace existing files in DIR")


def report(paths: Sequence[Path]) -> None:
    import sys

    print(f"wrote {paths[0]} and {paths[1]}; serve with: CLASSGUARD_CONFIG={paths[0]} bentoml serve", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    paths = write_config(args.tag, args.out, derive=dict(args.derive), force=args.force)
    report(paths)
    return 0
