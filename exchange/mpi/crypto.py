"""Encryption at rest of identity card and phone numbers (Fernet: AES-128-CBC + HMAC-SHA256).

Keys come from settings.EXCHANGE_ENCRYPTION_KEYS, newest first: the newest encrypts, every
listed key decrypts (MultiFernet), so a new key is rolled out by putting it first, running
``manage.py rotate_keys`` and then removing the old key — without downtime. With DEBUG on and
no keys, a development key is derived from SECRET_KEY; otherwise the first use raises
ImproperlyConfigured. Exact lookups use the keyed blind indexes (``blind_index``), never the
ciphertext (which is randomised).
"""

import base64
import functools
import hashlib
import hmac

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

__all__ = ["InvalidToken", "encrypt", "decrypt", "is_current", "rotate", "blind_index"]


def _dev_key(secret: str) -> bytes:
    return base64.urlsafe_b64encode(hashlib.sha256(b"exchange-mpi-dev-encryption:" + secret.encode()).digest())


@functools.lru_cache(maxsize=8)
def _build(keys: tuple[str, ...]) -> tuple[MultiFernet, Fernet]:
    try:
        fernets = [Fernet(k.encode() if isinstance(k, str) else k) for k in keys]
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured(
            "EXCHANGE_ENCRYPTION_KEYS holds a value that is not a Fernet key (32 url-safe base64-encoded bytes; "
            "make one with: python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')"
        ) from exc
    return MultiFernet(fernets), fernets[0]


def _keys() -> tuple[str, ...]:
    keys = tuple(k for k in (getattr(settings, "EXCHANGE_ENCRYPTION_KEYS", None) or []) if k)
    if keys:
        return keys
    if settings.DEBUG:
        return (_dev_key(settings.SECRET_KEY).decode(),)
    raise ImproperlyConfigured(
        "EXCHANGE_ENCRYPTION_KEYS is required unless DEBUG=1: a comma-separated list of Fernet keys, newest first, "
        "that encrypt identity card and phone numbers at rest (see docs/decisions/0009-mpi-records.md)"
    )


def _fernets() -> tuple[MultiFernet, Fernet]:
    return _build(_keys())


def encrypt(value: str) -> str:
    return _fernets()[0].encrypt(value.encode()).decode()


def decrypt(token: str) -> str:
    """Plain text of a token made with any listed key. Raises InvalidToken if no key fits."""
    return _fernets()[0].decrypt(token.encode()).decode()


def is_current(token: str) -> bool:
    """True if the newest key alone decrypts ``token`` (rotate_keys skips it)."""
    try:
        _fernets()[1].decrypt(token.encode())
    except InvalidToken:
        return False
    return True


def rotate(token: str) -> str:
    """The same plain text under the newest key."""
    return _fernets()[0].rotate(token.encode()).decode()


def blind_index(value: str, *, domain: str = "") -> str:
    """Keyed HMAC-SHA256 for exact lookup. ``domain`` separates kinds of values (phone numbers
    must not collide with identity card numbers); the RIC index keeps the foundation's form
    (no domain) so existing rows keep working."""
    key = settings.EXCHANGE_IDENTITY_HMAC_KEY.encode()
    message = (domain + ":" + value if domain else value).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()
