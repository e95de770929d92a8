"""Verify the audit trail: every hash, every link, no gaps, every signed checkpoint.

Streams the events in seq order (constant memory whatever the trail's size) and stops at the
first problem, which is what an auditor needs to know: everything before it is intact.
"""

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from django.utils import timezone

from audit import signing
from audit.chain import CHAIN_FIELDS, GENESIS_HASH, event_hash
from audit.models import AuditCheckpoint, AuditEvent, AuditHead
from audit.services import unsealed_summary

CHUNK_SIZE = 2000


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    events: int
    last_seq: int
    checkpoints: int
    broken_seq: int | None = None
    problem: str = ""
    # Sequencer mode: events committed but not chained yet, and the age (s) of the oldest.
    unsealed: int = 0
    oldest_unsealed_age: float | None = None

    def __str__(self) -> str:
        if self.ok:
            text = f"OK: {self.events} events, last seq {self.last_seq}, {self.checkpoints} checkpoints verified"
            if self.unsealed:
                text += f"; {self.unsealed} newer events not sealed yet (oldest {self.oldest_unsealed_age:.0f} s)"
            return text
        return f"BROKEN at seq {self.broken_seq}: {self.problem}"

    @property
    def sealer_late(self) -> bool:
        """Events waited longer than AUDIT_SEAL_MAX_LAG: no sealer is running (not tampering)."""
        from django.conf import settings

        return self.oldest_unsealed_age is not None and self.oldest_unsealed_age > settings.AUDIT_SEAL_MAX_LAG


def verify_chain(public_keys: Iterable[Ed25519PublicKey] | None = None) -> VerifyResult:
    """Check the chain (DICOM PS3.15 A.5 / IHE ATNA trail) and its Ed25519 checkpoints (RFC 8032).

    ``public_keys``: keys that may have signed checkpoints (several after a key rotation);
    by default the public half of the configured signing key, needed only if checkpoints exist.
    """
    checkpoints: dict[int, list[AuditCheckpoint]] = defaultdict(list)
    for checkpoint in AuditCheckpoint.objects.order_by("seq", "id"):
        checkpoints[checkpoint.seq].append(checkpoint)
    keys = {}
    if checkpoints:
        if public_keys is None:
            public_keys = [signing.signing_key().public_key()]
        keys = {signing.key_id(key): key for key in public_keys}

    # Read before the events: writers may append while we stream, never below this head.
    head = AuditHead.objects.filter(pk=AuditHead.ROW_ID).values_list("seq", "hash").first()
    count, seq, hash = 0, 0, GENESIS_HASH
    verified = 0

    def broken(at: int, problem: str) -> VerifyResult:
        return VerifyResult(False, count, seq, verified, at, problem)

    # Unsealed events (sequencer mode) are not in the chain yet; counted, then reported.
    unsealed, oldest = unsealed_summary()
    rows = AuditEvent.objects.filter(seq__isnull=False).order_by("seq").values(*CHAIN_FIELDS, "hash").iterator(chunk_size=CHUNK_SIZE)
    for row in rows:
        expected = seq + 1
        if row["seq"] != expected:
            return broken(expected, f"event missing (the next event present is seq {row['seq']})")
        if row["prev_hash"] != hash:
            return broken(expected, f"prev_hash does not match the hash of seq {seq}")
        if event_hash(row) != row["hash"]:
            return broken(expected, "hash does not match the event's contents (event altered)")
        count, seq, hash = count + 1, expected, row["hash"]
        if head is not None and head[0] == seq and head[1] != hash:
            return broken(seq, "the chain head records another hash for this seq")
        for checkpoint in checkpoints.pop(seq, []):
            problem = _checkpoint_problem(checkpoint, hash, keys)
            if problem:
                return broken(seq, problem)
            verified += 1

    if checkpoints:
        at = min(checkpoints)
        return broken(at, f"a checkpoint signed seq {at} but the trail ends at seq {seq} (events removed)")
    if head is not None and head[0] > seq:
        return broken(seq + 1, f"event missing (the chain head records seq {head[0]}; events removed)")
    age = (timezone.now() - oldest).total_seconds() if oldest else None
    return VerifyResult(True, count, seq, verified, unsealed=unsealed, oldest_unsealed_age=age)


def _checkpoint_problem(checkpoint: AuditCheckpoint, chain_hash: str, keys: dict) -> str:
    if checkpoint.hash != chain_hash:
        return f"checkpoint {checkpoint.pk} signed another hash for this seq (trail rewritten)"
    key = keys.get(checkpoint.key_id)
    if key is None:
        return f"checkpoint {checkpoint.pk} is signed by key {checkpoint.key_id}, which is not among the public keys"
    message = signing.checkpoint_message(checkpoint.seq, checkpoint.hash, checkpoint.signed_at)
    if not signing.signature_valid(key, message, checkpoint.signature):
        return f"checkpoint {checkpoint.pk} has an invalid signature"
    return ""
