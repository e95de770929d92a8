from celery import shared_task
from django.db import OperationalError

from audit.services import checkpoint_create


@shared_task(acks_late=True, autoretry_for=(OperationalError,), retry_backoff=60, max_retries=5)
def checkpoint_task() -> int | None:
    """Sign the audit chain's head (beat: hourly, see CELERY_BEAT_SCHEDULE). Returns the signed seq."""
    checkpoint = checkpoint_create()
    return checkpoint.seq if checkpoint else None
