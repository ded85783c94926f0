"""Names shared by everything that watches, serves, trains and stores: one home for each.

- A subgroup key: `attr=value` pairs joined by commas, in declared order (`capture=phone`),
  the `subgroup` label value, the log's subgroup column and a training profile's key.
- A known-confusion pair name: `source->target` (`6->0`).
- Per-prediction flags: `low_confidence`, and `known_confusion:<pair name>`.
"""

from __future__ import annotations

from typing import Mapping

LOW_CONFIDENCE_FLAG = "low_confidence"
CONFUSION_FLAG_PREFIX = "known_confusion:"


def subgroup_key(attributes: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in attributes.items())


def parse_subgroup_key(key: str) -> dict[str, str]:
    """The inverse of subgroup_key."""
    return dict(part.split("=", 1) for part in key.split(",") if "=" in part)


def pair_name(source: str, target: str) -> str:
    return f"{source}->{target}"


def confusion_flag(pair: str) -> str:
    return CONFUSION_FLAG_PREFIX + pair


def flag_pair(flag: str) -> str | None:
    """The pair a known-confusion flag names; None for any other flag."""
    return flag[len(CONFUSION_FLAG_PREFIX):] if flag.startswith(CONFUSION_FLAG_PREFIX) else None
