"""Chain the events that existed before the hash chain: seq by id order, hashes computed.

Runs before the append-only triggers exist (0005). The canonical encoding is imported from
audit.chain on purpose: it is a fixed contract, and verify_audit must agree with these hashes.
"""

from django.db import migrations

from audit.chain import CHAIN_FIELDS, GENESIS_HASH, event_hash, normalize_details

BATCH = 1000


def chain_existing_events(apps, schema_editor):
    AuditEvent = apps.get_model("audit", "AuditEvent")
    AuditHead = apps.get_model("audit", "AuditHead")
    seq, prev_hash = 0, GENESIS_HASH
    batch = []
    for event in AuditEvent.objects.order_by("id").iterator(chunk_size=BATCH):
        seq += 1
        event.seq, event.prev_hash = seq, prev_hash
        event.details = normalize_details(event.details)
        event.hash = prev_hash = event_hash({name: getattr(event, name) for name in CHAIN_FIELDS})
        batch.append(event)
        if len(batch) >= BATCH:
            AuditEvent.objects.bulk_update(batch, ["seq", "prev_hash", "hash", "details"])
            batch = []
    if batch:
        AuditEvent.objects.bulk_update(batch, ["seq", "prev_hash", "hash", "details"])
    AuditHead.objects.update_or_create(id=1, defaults={"seq": seq, "hash": prev_hash})


class Migration(migrations.Migration):

    dependencies = [
        ("audit", "0003_chain_fields"),
    ]

    operations = [
        migrations.RunPython(chain_existing_events, migrations.RunPython.noop),
    ]
