"""Normalisation of identity attributes (the patient-index issue extends this)."""

import functools
import hashlib
import hmac
from datetime import date

from django.conf import settings
from stdnum.cn import ric

# IssuerOfPatientID values that mark a Resident Identity Card number in OtherPatientIDsSequence.
RIC_ISSUERS = {"RIC", "CN-RIC", "CNRIC", "身份证", "RESIDENT IDENTITY CARD", "2.16.156.10011.1.5"}


@functools.lru_cache(maxsize=4096)
def _valid_ric(text: str) -> str | None:
    # stdnum also checks the region code against its table, which is slow; every instance of a
    # study carries the same number, so remember the answer.
    try:
        number = ric.validate(text)
    except Exception:
        return None
    return number.upper() if len(number) == 18 else None


def clean_ric(value: str | None) -> str | None:
    """A valid 18-character Resident Identity Card number (GB 11643, ISO 7064 MOD 11-2 check
    digit, real birth date), upper-case; None if the value is not one."""
    if not value:
        return None
    text = str(value).strip()
    if len(text) not in (15, 18):
        return None
    return _valid_ric(text)


def ric_blind_index(number: str) -> str:
    """Keyed HMAC-SHA256 of the number: exact lookup without storing the number."""
    key = settings.EXCHANGE_IDENTITY_HMAC_KEY.encode()
    return hmac.new(key, number.encode(), hashlib.sha256).hexdigest()


def parse_da(value) -> date | None:
    """A DICOM DA value (YYYYMMDD) as a date; None if empty or invalid."""
    text = str(value or "").strip()
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None
