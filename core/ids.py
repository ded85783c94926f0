"""Request ids: the key the service mints for every answer, and the client's correlation id.

Every logged answer is keyed by an id the service owns, so no client can make two answers
share a key (a reused `X-Request-ID` had silently replaced another request's log row and
joined its feedback to the wrong answer). The client's `X-Request-ID`, when well formed, is
kept beside it as a searchable correlation id.
"""

from __future__ import annotations

import os
import re
import uuid

from core.clock import CLOCK

REQUEST_ID_HEADER = "X-Request-ID"        # response: the service's id; request: the client's
CORRELATION_ID_HEADER = "X-Correlation-ID"  # response: the client's X-Request-ID, echoed
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# a lookup key: a service id, a client id, either with a batch slot suffix (`.17`)
_LOOKUP_ID = re.compile(r"[A-Za-z0-9._:-]{1,80}")


def correlation_id(sent: str | None) -> str | None:
    """The client's id if it is well formed (1-64 of A-Z a-z 0-9 . _ : -); else none."""
    return sent if sent is not None and _CLIENT_ID.fullmatch(sent) else None


def is_lookup_id(text: object) -> bool:
    return isinstance(text, str) and _LOOKUP_ID.fullmatch(text) is not None


def slot_id(request_id: str | None, index: int) -> str | None:
    """The id of image `index` of a batch request."""
    return None if request_id is None else f"{request_id}.{index}"


def time_ordered_id() -> str:
    """A UUIDv7-layout id as 32 hex digits: milliseconds since the epoch, then 74 random bits.

    Ids that sort by time make the prediction log's primary-key index grow at its end; with
    random (v4) ids every write touched pages all over it, and writing a row cost 4 us on an
    empty log but 22 us at 200,000 rows. The time is the fleet's (core.clock): another replica
    tells from it whether the answer may still arrive (held labels), whatever this host's clock says."""
    ms = int(CLOCK.now() * 1000)
    rand = int.from_bytes(os.urandom(10), "big")
    value = ((ms & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | (rand >> 62 & 0xFFF) << 64
             | 0b10 << 62 | rand & 0x3FFF_FFFF_FFFF_FFFF)
    return uuid.UUID(int=value).hex


_SERVICE_ID = re.compile(r"([0-9a-f]{12})7[0-9a-f]{3}[89ab][0-9a-f]{15}(?:\.\d{1,5})?")


def minted_at(key: str) -> float | None:
    """When the service minted this id (or a batch slot of it), in Unix seconds; None for a
    key that is not a service id (a client's correlation id)."""
    match = _SERVICE_ID.fullmatch(key)
    return int(match.group(1), 16) / 1000.0 if match else None
