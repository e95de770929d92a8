"""The audit hash chain: canonical encoding of one event and its SHA-256.

Each row carries the hash of the row before it (``prev_hash``) and its own hash over a canonical
encoding of all its fields, so that changing, inserting or removing any row breaks every link
after it (tamper evidence for the DICOM PS3.15 A.5 / IHE ATNA audit trail). The first row links
to ``GENESIS_HASH``.

The encoding is a contract with anyone who verifies the trail independently (a regulator's own
tool): never change it for existing rows. It is JSON with sorted keys, no whitespace, ASCII only
(``json.dumps(fields, sort_keys=True, separators=(",", ":"))``), of exactly the keys in
``CHAIN_FIELDS``; the timestamp is ISO-8601 UTC with microseconds (``2026-01-31T08:00:00.000000Z``);
foreign keys are their integer ids or null; empty text is ``""``.
"""

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime

GENESIS_HASH = "0" * 64

# Model field names (``values()`` names) that the hash covers, in no particular order.
CHAIN_FIELDS = (
    "seq",
    "timestamp",
    "event",
    "outcome",
    "actor_id",
    "actor_name",
    "actor_role",
    "actor_hospital_id",
    "patient_id",
    "study_id",
    "purpose",
    "basis",
    "details",
    "prev_hash",
)


def format_timestamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def normalize_details(details: Mapping | None) -> dict:
    """The details as they will read back from the database (a JSON round trip).

    The hash is computed over what is stored, so tuples become lists, non-string keys become
    strings, and values that JSON cannot hold (NaN, objects) are refused before anything is written.
    """
    return json.loads(json.dumps(dict(details or {}), allow_nan=False))


def canonical_bytes(fields: Mapping) -> bytes:
    document = {name: fields[name] for name in CHAIN_FIELDS}
    document["timestamp"] = format_timestamp(document["timestamp"])
    return json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("ascii")


def event_hash(fields: Mapping) -> str:
    """SHA-256 (hex) of one event's canonical encoding; ``fields`` maps every CHAIN_FIELDS name."""
    return hashlib.sha256(canonical_bytes(fields)).hexdigest()
