"""Test-run defaults for settings that have no safe default outside DEBUG. Explicit values in
the environment (CI, a developer's shell) win."""

import os

os.environ.setdefault("SECRET_KEY", "test-only-secret-key-not-for-production")
os.environ.setdefault("EXCHANGE_IDENTITY_HMAC_KEY", "test-only-identity-key")
os.environ.setdefault("SECURE_COOKIES", "0")
# A Fernet key made for tests only: encrypts synthetic identity numbers in test databases.
os.environ.setdefault("EXCHANGE_ENCRYPTION_KEYS", "q5wfE9Q4G-a8KuB3l2V97rh4yheC9lnOimVoPMdAe6s=")
# The suite chains audit events inline, so a test can read an event's seq and hash right after
# record(); the sequencer mode (PostgreSQL's default) has its own tests in tests/audit/test_sequencer.py.
os.environ.setdefault("AUDIT_CHAIN_MODE", "inline")
