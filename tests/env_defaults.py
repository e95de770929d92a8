"""Test-run defaults for settings that have no safe default outside DEBUG. Explicit values in
the environment (CI, a developer's shell) win."""

import os

os.environ.setdefault("SECRET_KEY", "test-only-secret-key-not-for-production")
os.environ.setdefault("EXCHANGE_IDENTITY_HMAC_KEY", "test-only-identity-key")
os.environ.setdefault("SECURE_COOKIES", "0")
