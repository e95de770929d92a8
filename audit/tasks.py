from celery import shared_task
from django.db import OperationalError

from audit.services import checkpoint_create


@shared_task(acks_late=True, autoretry_for=(OperationalError,), retry_backoff=60, max_retries=5)
def checkpoint_task() -> int | None:
    """Sign the audit chain's head (beat: hourly, see CELERY_BEAT_SCHEDULE). Returns the signed seq."""
    checkpoint = checkpoint_create()
    return checkpoint.seq if checkpoint else None


@shared_task(acks_late=True, ignore_result=True)
def seal_task() -> int:
    """Sequencer mode's backstop (beat: every AUDIT_SEAL_INTERVAL s): chain what is still unsealed.

    Idempotent: a second run, or one racing the writers' own on-commit sealing, finds nothing left
    or waits for the head lock and continues the chain where the other stopped."""
    from audit.services import seal

    return seal(wait=True)
