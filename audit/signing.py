"""Ed25519 keys for signed audit checkpoints (RFC 8032 (Ed25519)).

The private key comes from AUDIT_SIGNING_KEY / AUDIT_SIGNING_KEY_FILE: a PEM private key
(PKCS#8, ``openssl genpkey -algorithm ed25519``) or the base64 of the raw 32-byte seed. With
DEBUG on and no key configured, a development key is derived from SECRET_KEY: anyone who knows
SECRET_KEY can forge its checkpoints, so it is never used outside DEBUG.
"""

import base64
import binascii
import hashlib
import hmac
from datetime import datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from audit.chain import format_timestamp

# Domain separation: this key's signatures can never be mistaken for signatures of anything else.
MESSAGE_PREFIX = "exchange-audit-checkpoint-v1"


def parse_private_key(text: str) -> Ed25519PrivateKey:
    text = text.strip()
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(text.encode("ascii"), password=None)
        except (ValueError, TypeError) as exc:
            raise ImproperlyConfigured(f"AUDIT_SIGNING_KEY: not a readable PEM private key ({exc})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ImproperlyConfigured("AUDIT_SIGNING_KEY: the PEM key is not an Ed25519 key")
        return key
    try:
        seed = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        seed = b""
    if len(seed) != 32:
        raise ImproperlyConfigured("AUDIT_SIGNING_KEY must be an Ed25519 PEM private key or a base64 32-byte seed")
    return Ed25519PrivateKey.from_private_bytes(seed)


def signing_key() -> Ed25519PrivateKey:
    configured = getattr(settings, "AUDIT_SIGNING_KEY", None)
    if configured:
        return parse_private_key(configured)
    if settings.DEBUG:
        seed = hmac.new(settings.SECRET_KEY.encode(), b"audit checkpoint development key", hashlib.sha256).digest()
        return Ed25519PrivateKey.from_private_bytes(seed)
    raise ImproperlyConfigured("AUDIT_SIGNING_KEY (or AUDIT_SIGNING_KEY_FILE) is required to sign audit checkpoints")


def public_key_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def load_public_key_pem(data: bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(data)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def key_id(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:32]


def checkpoint_message(seq: int, hash: str, signed_at: datetime) -> bytes:
    """What a checkpoint signs: ``exchange-audit-checkpoint-v1|<seq>|<hash>|<signed_at>`` (ASCII).

    The time is inside the signature so a checkpoint cannot be re-dated.
    """
    return f"{MESSAGE_PREFIX}|{seq}|{hash}|{format_timestamp(signed_at)}".encode("ascii")


def sign(key: Ed25519PrivateKey, message: bytes) -> str:
    return key.sign(message).hex()


def signature_valid(key: Ed25519PublicKey, message: bytes, signature_hex: str) -> bool:
    try:
        key.verify(bytes.fromhex(signature_hex), message)
    except (InvalidSignature, ValueError):
        return False
    return True
