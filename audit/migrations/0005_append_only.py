"""Make the chain fields mandatory and have the database refuse changes to the trail.

PostgreSQL: a row trigger refuses UPDATE and DELETE on events and checkpoints. TRUNCATE is not
refused by a trigger because Django's test runner empties every table with TRUNCATE between
transactional tests; in production the application's role should not own these tables (grant it
SELECT, INSERT only), and signed checkpoints reveal a truncation (docs/decisions/0006-audit-chain.md).

SQLite (the embedded demo): a trigger refuses UPDATE. DELETE is left to the ORM guard and to
verify_audit, because Django's test flush empties tables with DELETE. SQLite drops a table's
triggers when a migration rebuilds the table: a later migration that alters audit_auditevent
must create them again (tests/audit/test_append_only.py fails if it does not).
"""

from django.db import migrations, models

POSTGRESQL_CREATE = [
    """
    CREATE OR REPLACE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION USING MESSAGE = 'audit trail is append-only: ' || TG_OP || ' on ' || TG_TABLE_NAME || ' refused';
    END
    $$
    """,
    """
    CREATE TRIGGER audit_auditevent_append_only BEFORE UPDATE OR DELETE ON audit_auditevent
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change()
    """,
    """
    CREATE TRIGGER audit_auditcheckpoint_append_only BEFORE UPDATE OR DELETE ON audit_auditcheckpoint
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change()
    """,
]
POSTGRESQL_DROP = [
    "DROP TRIGGER IF EXISTS audit_auditevent_append_only ON audit_auditevent",
    "DROP TRIGGER IF EXISTS audit_auditcheckpoint_append_only ON audit_auditcheckpoint",
    "DROP FUNCTION IF EXISTS audit_refuse_change()",
]
SQLITE_CREATE = [
    """
    CREATE TRIGGER audit_auditevent_append_only BEFORE UPDATE ON audit_auditevent
    BEGIN SELECT RAISE(ABORT, 'audit trail is append-only: UPDATE on audit_auditevent refused'); END
    """,
    """
    CREATE TRIGGER audit_auditcheckpoint_append_only BEFORE UPDATE ON audit_auditcheckpoint
    BEGIN SELECT RAISE(ABORT, 'audit trail is append-only: UPDATE on audit_auditcheckpoint refused'); END
    """,
]
SQLITE_DROP = [
    "DROP TRIGGER IF EXISTS audit_auditevent_append_only",
    "DROP TRIGGER IF EXISTS audit_auditcheckpoint_append_only",
]


def _run(statements_by_vendor):
    def run(apps, schema_editor):
        for sql in statements_by_vendor.get(schema_editor.connection.vendor, []):
            # params=None: no placeholder parsing, the SQL is sent as written.
            schema_editor.execute(sql, params=None)

    return run


class Migration(migrations.Migration):

    dependencies = [
        ("audit", "0004_chain_backfill"),
    ]

    operations = [
        migrations.AlterField(
            model_name="auditevent",
            name="seq",
            field=models.BigIntegerField(unique=True),
        ),
        migrations.AlterField(
            model_name="auditevent",
            name="prev_hash",
            field=models.CharField(max_length=64),
        ),
        migrations.AlterField(
            model_name="auditevent",
            name="hash",
            field=models.CharField(max_length=64),
        ),
        # Last: on SQLite the AlterFields above rebuild the table, which would drop the triggers.
        migrations.RunPython(
            _run({"postgresql": POSTGRESQL_CREATE, "sqlite": SQLITE_CREATE}),
            _run({"postgresql": POSTGRESQL_DROP, "sqlite": SQLITE_DROP}),
        ),
    ]
