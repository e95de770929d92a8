import base64
from contextlib import contextmanager

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from django.db import connection

TRIGGERS = ("audit_auditevent_append_only", "audit_auditcheckpoint_append_only")


def seed_of(key: Ed25519PrivateKey) -> str:
    return base64.b64encode(key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())).decode()


@pytest.fixture
def signing_key(settings) -> Ed25519PrivateKey:
    """A fresh Ed25519 audit signing key, configured as AUDIT_SIGNING_KEY (base64 seed)."""
    key = Ed25519PrivateKey.generate()
    settings.AUDIT_SIGNING_KEY = seed_of(key)
    return key


def raw_sql(sql: str, params=()) -> None:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


@contextmanager
def append_only_triggers_disabled():
    """What an attacker with database access would do first; the chain must still tell."""
    if connection.vendor == "postgresql":
        # Deferred foreign-key checks of the test's inserts would block ALTER TABLE: run them now.
        raw_sql("SET CONSTRAINTS ALL IMMEDIATE")
        for name, table in zip(TRIGGERS, ("audit_auditevent", "audit_auditcheckpoint")):
            raw_sql(f"ALTER TABLE {table} DISABLE TRIGGER {name}")
        try:
            yield
        finally:
            for name, table in zip(TRIGGERS, ("audit_auditevent", "audit_auditcheckpoint")):
                raw_sql(f"ALTER TABLE {table} ENABLE TRIGGER {name}")
    else:
        with connection.cursor() as cursor:
            cursor.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND name IN (%s, %s)", TRIGGERS)
            saved = cursor.fetchall()
            for name, _ in saved:
                cursor.execute(f"DROP TRIGGER {name}")
        try:
            yield
        finally:
            for _, sql in saved:
                raw_sql(sql)
