"""Sequencer mode (docs/decisions/0012-audit-sequencer.md): an event may be inserted unsealed
(seq null, hashes empty) and chained later by audit.services.seal().

The database still refuses every change to the trail but one: sealing an unsealed event, once —
seq from null to a value, both hashes from empty to 64 hex characters, every other column
unchanged. DELETE stays refused on PostgreSQL (0005). On SQLite the AlterFields rebuild the table,
which drops its trigger: it is created again last (tests/audit/test_append_only.py checks).
"""

from django.conf import settings
from django.db import migrations, models

CONTENT = ("id", "timestamp", "event", "outcome", "actor_id", "actor_name", "actor_role", "actor_hospital_id",
           "patient_id", "study_id", "purpose", "basis", "details")


def _sealing(equal: str) -> str:
    same = " AND ".join(equal.format(c=c) for c in CONTENT)
    return (f"OLD.seq IS NULL AND NEW.seq IS NOT NULL AND OLD.prev_hash = '' AND OLD.hash = '' "
            f"AND length(NEW.prev_hash) = 64 AND length(NEW.hash) = 64 AND {same}")


POSTGRESQL_CREATE = [
    f"""
    CREATE OR REPLACE FUNCTION audit_event_seal_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'UPDATE' AND {_sealing("NEW.{c} IS NOT DISTINCT FROM OLD.{c}")} THEN
            RETURN NEW;
        END IF;
        RAISE EXCEPTION USING MESSAGE = 'audit trail is append-only: ' || TG_OP || ' on ' || TG_TABLE_NAME || ' refused';
    END
    $$
    """,
    "DROP TRIGGER IF EXISTS audit_auditevent_append_only ON audit_auditevent",
    """
    CREATE TRIGGER audit_auditevent_append_only BEFORE UPDATE OR DELETE ON audit_auditevent
    FOR EACH ROW EXECUTE FUNCTION audit_event_seal_only()
    """,
]
POSTGRESQL_DROP = [
    "DROP TRIGGER IF EXISTS audit_auditevent_append_only ON audit_auditevent",
    """
    CREATE TRIGGER audit_auditevent_append_only BEFORE UPDATE OR DELETE ON audit_auditevent
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change()
    """,
    "DROP FUNCTION IF EXISTS audit_event_seal_only()",
]
SQLITE_CREATE = [
    "DROP TRIGGER IF EXISTS audit_auditevent_append_only",
    f"""
    CREATE TRIGGER audit_auditevent_append_only BEFORE UPDATE ON audit_auditevent
    WHEN NOT ({_sealing("NEW.{c} IS OLD.{c}")})
    BEGIN SELECT RAISE(ABORT, 'audit trail is append-only: UPDATE on audit_auditevent refused'); END
    """,
]
SQLITE_DROP = [
    "DROP TRIGGER IF EXISTS audit_auditevent_append_only",
    """
    CREATE TRIGGER audit_auditevent_append_only BEFORE UPDATE ON audit_auditevent
    BEGIN SELECT RAISE(ABORT, 'audit trail is append-only: UPDATE on audit_auditevent refused'); END
    """,
]


def _run(statements_by_vendor):
    def run(apps, schema_editor):
        for sql in statements_by_vendor.get(schema_editor.connection.vendor, []):
            schema_editor.execute(sql, params=None)

    return run


class Migration(migrations.Migration):

    dependencies = [
        ("audit", "0006_break_glass_review"),
        ("hospitals", "0003_archiveendpoint"),
        ("mpi", "0002_mpi_records"),
        ("studies", "0002_federated_studies"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterModelOptions(name="auditevent", options={"ordering": ["id"]}),
        migrations.AlterField(model_name="auditevent", name="hash", field=models.CharField(blank=True, max_length=64)),
        migrations.AlterField(model_name="auditevent", name="prev_hash", field=models.CharField(blank=True, max_length=64)),
        migrations.AlterField(model_name="auditevent", name="seq",
                              field=models.BigIntegerField(blank=True, null=True, unique=True)),
        migrations.AddIndex(
            model_name="auditevent",
            index=models.Index(condition=models.Q(("seq__isnull", True)), fields=["id"], name="audit_event_unsealed"),
        ),
        # Last: on SQLite the AlterFields above rebuild the table, which drops the trigger.
        migrations.RunPython(
            _run({"postgresql": POSTGRESQL_CREATE, "sqlite": SQLITE_CREATE}),
            _run({"postgresql": POSTGRESQL_DROP, "sqlite": SQLITE_DROP}),
        ),
    ]
