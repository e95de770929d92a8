"""Settings for the provincial image exchange. Configuration comes from the environment only;
docs/configuration.md lists every variable."""

from pathlib import Path

import dj_database_url

from exchange.env import ConfigurationError, env_bool, env_int, env_list, env_secret, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("EXCHANGE_VAR_DIR") or BASE_DIR / "var")

DEBUG = env_bool("DEBUG", False)

SECRET_KEY = env_secret("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ConfigurationError("SECRET_KEY is required unless DEBUG=1 (see docs/configuration.md)")
    # Development only: never used when DEBUG is off.
    SECRET_KEY = "dev-only-insecure-key-do-not-use-in-production"

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "guardian",
    "hospitals",
    "exchange.mpi",
    "exchange.studies",
    "exchange.dicomweb",
    "exchange.viewer",
    "exchange.federation",
    "consent",
    "audit",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "audit.middleware.AuditUnavailableMiddleware",
]

ROOT_URLCONF = "exchange.urls"
WSGI_APPLICATION = "exchange.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "exchange" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Embedded default: an SQLite file under var/. Production and CI: DATABASE_URL=postgres://...
# Persistent connections on PostgreSQL (checked before reuse): opening one costs a backend
# process and the authentication, ≈ 10 ms of every short request such as a QIDO-RS search
# (docs/benchmarks-federation.md). Each gunicorn thread and Celery worker keeps at most one.
_DATABASE_URL = env_str("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'exchange.sqlite3'}"
DATABASES = {
    "default": dj_database_url.parse(
        _DATABASE_URL,
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 0 if _DATABASE_URL.startswith("sqlite") else 60),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # WAL lets the demo's page requests read while an import writes.
    # IMMEDIATE: a write transaction takes the lock at BEGIN and waits out `timeout`, instead of
    # failing at once when another writer committed between its first read and first write.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en"
TIME_ZONE = env_str("TIME_ZONE") or "Asia/Shanghai"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.BasicAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Provincial Image Exchange API",
    "DESCRIPTION": "Patient index (PIX/PDQ, FHIR R4 Patient), consent and audit APIs. DICOMweb lives under /dicomweb/ "
    "(docs/dicom-conformance.md).",
    "VERSION": "0.1",
    "SERVE_INCLUDE_SCHEMA": False,
    # drf-spectacular drops "$" from paths; put FHIR operation names ($match) back.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "exchange.mpi.api.schema.restore_fhir_operations",
    ],
}

# --- Storage and ingest -------------------------------------------------------------------
EXCHANGE_STORAGE_DIR = Path(env_str("EXCHANGE_STORAGE_DIR") or VAR_DIR / "storage")
# One DICOM instance larger than this is refused (bytes). 2 GiB covers large multi-frame objects.
EXCHANGE_MAX_INSTANCE_BYTES = env_int("EXCHANGE_MAX_INSTANCE_BYTES", 2 * 1024**3)
# A whole STOW-RS request body larger than this is refused with 413 before it is read.
EXCHANGE_MAX_STOW_BYTES = env_int("EXCHANGE_MAX_STOW_BYTES", 32 * 1024**3)
# ZIP import: the most bytes all entries may expand to, and the most entries (ZIP bomb bounds).
EXCHANGE_ZIP_MAX_TOTAL_BYTES = env_int("EXCHANGE_ZIP_MAX_TOTAL_BYTES", 20 * 1024**3)
EXCHANGE_ZIP_MAX_ENTRIES = env_int("EXCHANGE_ZIP_MAX_ENTRIES", 200_000)
EXCHANGE_ZIP_MAX_RATIO = env_int("EXCHANGE_ZIP_MAX_RATIO", 200)
# Keyed blind index for identity card numbers (HMAC-SHA256). Required outside DEBUG.
EXCHANGE_IDENTITY_HMAC_KEY = env_secret("EXCHANGE_IDENTITY_HMAC_KEY") or (SECRET_KEY if DEBUG else None)
if not EXCHANGE_IDENTITY_HMAC_KEY:
    raise ConfigurationError("EXCHANGE_IDENTITY_HMAC_KEY is required unless DEBUG=1")
# Base URL that DICOMweb RetrieveURL attributes are built on; empty: taken from the request.
EXCHANGE_PUBLIC_URL = (env_str("EXCHANGE_PUBLIC_URL") or "").rstrip("/")
QIDO_MAX_LIMIT = env_int("QIDO_MAX_LIMIT", 1000)

# --- Master patient index (issue #3; exchange/mpi/, docs/decisions/0008-mpi-matching.md) -------
# Match scores at or above LINK link automatically; between REVIEW and LINK go to the review
# queue; below REVIEW make a new patient. Log-likelihood (Fellegi-Sunter) units; the precision
# and recall each pair gives are in docs/benchmarks.md.
MPI_LINK_THRESHOLD = float(env_str("MPI_LINK_THRESHOLD") or 23.0)
MPI_REVIEW_THRESHOLD = float(env_str("MPI_REVIEW_THRESHOLD") or 14.0)
# Keys that encrypt identity card numbers and phone numbers at rest (Fernet/AES, comma-separated,
# newest first: the first encrypts, all decrypt, so keys rotate without downtime). Required
# outside DEBUG; DEBUG derives a development key from SECRET_KEY.
EXCHANGE_ENCRYPTION_KEYS = env_list("EXCHANGE_ENCRYPTION_KEYS", [])
if not EXCHANGE_ENCRYPTION_KEYS:
    _k = env_secret("EXCHANGE_ENCRYPTION_KEYS")
    EXCHANGE_ENCRYPTION_KEYS = [k.strip() for k in (_k or "").split(",") if k.strip()]

# --- Federation (issue #6, docs/decisions/0010-federation.md) -------------------------------
# Most studies per QIDO/C-FIND answer before a sync window is split.
FEDERATION_QIDO_PAGE = env_int("FEDERATION_QIDO_PAGE", 200)
# Each incremental sync re-reads this many days before its watermark (studies of "today" keep arriving).
FEDERATION_SYNC_LOOKBACK_DAYS = env_int("FEDERATION_SYNC_LOOKBACK_DAYS", 1)
# First StudyDate an initial sync asks for.
FEDERATION_SYNC_EPOCH = env_str("FEDERATION_SYNC_EPOCH") or "19800101"
# A running sync job whose heartbeat is older than this is taken over (its worker died).
FEDERATION_SYNC_STALE_SECONDS = env_int("FEDERATION_SYNC_STALE_SECONDS", 900)
FEDERATION_RETRY_BASE_SECONDS = env_int("FEDERATION_RETRY_BASE_SECONDS", 30)
FEDERATION_SYNC_INTERVAL = env_int("FEDERATION_SYNC_INTERVAL", 900)
# A search refresh does not ask an archive that just did not answer: for this many seconds,
# doubling with each further failure up to the maximum (exchange/federation/search.py).
FEDERATION_SEARCH_BACKOFF_SECONDS = env_int("FEDERATION_SEARCH_BACKOFF_SECONDS", 30)
FEDERATION_SEARCH_BACKOFF_MAX_SECONDS = env_int("FEDERATION_SEARCH_BACKOFF_MAX_SECONDS", 600)
# --- Federation: retrieve proxy cache and prefetch of priors (exchange/federation/proxy.py) ---
# Where instances fetched from hospital archives are cached; empty: <EXCHANGE_STORAGE_DIR>/proxy-cache.
EXCHANGE_PROXY_CACHE_DIR = env_str("EXCHANGE_PROXY_CACHE_DIR") or ""
# Size limit of that cache (bytes); least recently used entries are evicted past it.
EXCHANGE_PROXY_CACHE_BYTES = env_int("EXCHANGE_PROXY_CACHE_BYTES", 10 * 1024**3)
if EXCHANGE_PROXY_CACHE_BYTES <= 0:
    raise ConfigurationError("EXCHANGE_PROXY_CACHE_BYTES must be a positive number of bytes")
# Prefetch of priors: how many of a patient's most recent remote studies an order warms by default.
EXCHANGE_PREFETCH_STUDIES = env_int("EXCHANGE_PREFETCH_STUDIES", 3)
# --- end retrieve proxy ---

# --- Consent (issue #5; consent/, docs/decisions/0011-consent.md) ------------------------------
# The province's default when a patient has recorded no choice: "opt-in" (other hospitals see
# nothing without consent; PIPL's separate consent for sensitive data) or "opt-out".
CONSENT_DEFAULT = env_str("CONSENT_DEFAULT") or "opt-in"
if CONSENT_DEFAULT not in ("opt-in", "opt-out"):
    raise ConfigurationError("CONSENT_DEFAULT must be opt-in or opt-out")
# How long a break-glass access stays open for that one patient (hours).
BREAK_GLASS_HOURS = env_int("BREAK_GLASS_HOURS", 4)
# Patient portal one-time codes: lifetime (seconds), attempts per code, codes per phone per hour.
OTP_TTL_SECONDS = env_int("OTP_TTL_SECONDS", 300)
OTP_MAX_ATTEMPTS = env_int("OTP_MAX_ATTEMPTS", 5)
OTP_MAX_PER_HOUR = env_int("OTP_MAX_PER_HOUR", 5)
# Where one-time codes go: "console" (prints the code; the demo) or a dotted path to a backend.
SMS_BACKEND = env_str("SMS_BACKEND") or ("console" if DEBUG else "")
# Share links: default lifetime (hours) and wrong-PIN attempts before the link locks.
SHARE_LINK_HOURS = env_int("SHARE_LINK_HOURS", 72)
SHARE_LINK_MAX_PIN_ATTEMPTS = env_int("SHARE_LINK_MAX_PIN_ATTEMPTS", 5)

# --- Audit export and forwarding (issue #4) ---------------------------------------------------
# Optional RFC 5424 syslog collector for audit events: host:port, TCP; TLS when AUDIT_SYSLOG_TLS=1.
AUDIT_SYSLOG_ADDRESS = env_str("AUDIT_SYSLOG_ADDRESS") or ""
AUDIT_SYSLOG_TLS = env_bool("AUDIT_SYSLOG_TLS", False)
AUDIT_SYSLOG_CA_FILE = env_str("AUDIT_SYSLOG_CA_FILE") or ""
# Price of one repeated examination (yuan) for the regulator's "studies reused" saving estimate.
AUDIT_PRICE_PER_EXAM = float(env_str("AUDIT_PRICE_PER_EXAM") or 300.0)
# Hours considered unusual for access (local time), e.g. "0-6".
AUDIT_UNUSUAL_HOURS = env_str("AUDIT_UNUSUAL_HOURS") or "0-6"

# --- Celery --------------------------------------------------------------------------------
# Unset broker: tasks run eagerly in-process (the embedded demo). Set: a real broker.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL") or None
CELERY_TASK_ALWAYS_EAGER = CELERY_BROKER_URL is None
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND") or None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 3600)
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 3900)
CELERY_BEAT_SCHEDULE: dict = {
    # Every FEDERATION_SYNC_INTERVAL (15 min): incremental index sync of every live archive.
    "federation-sync-live-endpoints": {
        "task": "exchange.federation.tasks.sync_live_endpoints_task",
        "schedule": float(FEDERATION_SYNC_INTERVAL),
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL") or "INFO"},
    # pydicom warns with element values (names, ids) when it meets odd data: keep them out.
    "loggers": {"pydicom": {"level": "ERROR"}, "pynetdicom": {"level": "WARNING"}},
}

# --- Audit trail: signed checkpoints (issue #4, docs/decisions/0006-audit-chain.md) ----------
# Ed25519 private key that signs checkpoints of the audit hash chain: a PEM private key or the
# base64 of its 32-byte seed; AUDIT_SIGNING_KEY_FILE names a file holding it. Only the worker
# that runs audit.tasks.checkpoint_task needs it. Unset with DEBUG=1: a development key derived
# from SECRET_KEY, never for production (whoever knows SECRET_KEY could forge checkpoints).
AUDIT_SIGNING_KEY = env_secret("AUDIT_SIGNING_KEY")
# Seconds between checkpoints: the regulator can prove nothing older than one interval was rewritten.
AUDIT_CHECKPOINT_INTERVAL = env_int("AUDIT_CHECKPOINT_INTERVAL", 3600)
if AUDIT_CHECKPOINT_INTERVAL <= 0:
    raise ConfigurationError("AUDIT_CHECKPOINT_INTERVAL must be a positive number of seconds")
# Hourly by default: sign the audit chain's head (seq and hash) so later tampering is provable.
CELERY_BEAT_SCHEDULE["audit-checkpoint"] = {
    "task": "audit.tasks.checkpoint_task",
    "schedule": float(AUDIT_CHECKPOINT_INTERVAL),
}

# --- Audit trail: who chains events (issue #4, docs/decisions/0012-audit-sequencer.md) ---------
# "inline": record() chains the event itself, holding the chain head's lock until the action's
# transaction ends (simple; writers queue behind each other). "sequencer": record() only inserts
# the event in the action's transaction and a sealer chains committed events in batches (many
# concurrent writers). Default: sequencer on PostgreSQL, inline on SQLite (one writer anyway).
AUDIT_CHAIN_MODE = (env_str("AUDIT_CHAIN_MODE")
                    or ("inline" if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3" else "sequencer"))
if AUDIT_CHAIN_MODE not in ("inline", "sequencer"):
    raise ConfigurationError("AUDIT_CHAIN_MODE must be inline or sequencer")
# Sequencer mode: also seal right after each commit that wrote events, unless another process is
# sealing. Off by default: it costs the request that wins a second commit (one more fsync), while
# the beat task or `manage.py audit_sealer` seal within a few seconds anyway.
AUDIT_SEAL_ON_COMMIT = env_bool("AUDIT_SEAL_ON_COMMIT", False)
# Sequencer mode: how often (seconds) the beat task seals what has been committed since.
AUDIT_SEAL_INTERVAL = env_int("AUDIT_SEAL_INTERVAL", 5)
# verify_audit reports events left unsealed for longer than this (seconds): the sealer is not running.
AUDIT_SEAL_MAX_LAG = env_int("AUDIT_SEAL_MAX_LAG", 300)
if AUDIT_SEAL_INTERVAL <= 0 or AUDIT_SEAL_MAX_LAG <= 0:
    raise ConfigurationError("AUDIT_SEAL_INTERVAL and AUDIT_SEAL_MAX_LAG must be positive numbers of seconds")
if AUDIT_CHAIN_MODE == "sequencer":
    CELERY_BEAT_SCHEDULE["audit-seal"] = {"task": "audit.tasks.seal_task", "schedule": float(AUDIT_SEAL_INTERVAL)}

# --- Federated search (issue #6, exchange/federation/search.py) ---------------------------------
# Most seconds a refresh waits for one archive (each archive's own timeout is capped by this);
# an archive that has not answered by then is reported as "did not answer".
try:
    EXCHANGE_FEDERATED_SEARCH_TIMEOUT = float(env_str("EXCHANGE_FEDERATED_SEARCH_TIMEOUT") or 5.0)
except ValueError:
    raise ConfigurationError("EXCHANGE_FEDERATED_SEARCH_TIMEOUT must be a number of seconds") from None
if not 0 < EXCHANGE_FEDERATED_SEARCH_TIMEOUT <= 300:
    raise ConfigurationError("EXCHANGE_FEDERATED_SEARCH_TIMEOUT must be between 0 and 300 seconds")

# --- DIMSE SCP (issue #6, exchange/federation/scp.py, `manage.py dicom_scp`) ---------------------
# The platform's own AE title, and where `dicom_scp` listens (loopback unless told otherwise).
EXCHANGE_SCP_AE_TITLE = (env_str("EXCHANGE_SCP_AE_TITLE") or "EXCHANGE").strip()
if not 0 < len(EXCHANGE_SCP_AE_TITLE) <= 16 or any(c == "\\" or not " " <= c <= "~" for c in EXCHANGE_SCP_AE_TITLE):
    raise ConfigurationError("EXCHANGE_SCP_AE_TITLE must be 1-16 printable ASCII characters, no backslash (PS3.5 §6.2)")
EXCHANGE_SCP_HOST = env_str("EXCHANGE_SCP_HOST") or "127.0.0.1"
EXCHANGE_SCP_PORT = env_int("EXCHANGE_SCP_PORT", 11112)
# Simultaneous associations; one more is rejected (A-ASSOCIATE-RJ transient, local limit exceeded).
EXCHANGE_SCP_MAX_ASSOCIATIONS = env_int("EXCHANGE_SCP_MAX_ASSOCIATIONS", 10)
# Seconds of silence (ACSE, DIMSE, network) after which an association is aborted.
EXCHANGE_SCP_TIMEOUT = env_int("EXCHANGE_SCP_TIMEOUT", 60)
if not 0 <= EXCHANGE_SCP_PORT < 65536 or EXCHANGE_SCP_MAX_ASSOCIATIONS < 1 or EXCHANGE_SCP_TIMEOUT < 1:
    raise ConfigurationError("EXCHANGE_SCP_PORT must be 0-65535, EXCHANGE_SCP_MAX_ASSOCIATIONS and EXCHANGE_SCP_TIMEOUT positive")

# --- C-MOVE retrieve (issue #6, exchange/federation/connectors/move.py) ------------------------
# The host name or address hospitals' archives reach dicom_scp at, shown to their admins as the
# C-MOVE destination (with EXCHANGE_SCP_AE_TITLE and EXCHANGE_SCP_PORT). Empty: EXCHANGE_SCP_HOST,
# unless that is a wildcard such as 0.0.0.0.
EXCHANGE_SCP_PUBLIC_HOST = (env_str("EXCHANGE_SCP_PUBLIC_HOST") or "").strip()
# --- end C-MOVE retrieve --------------------------------------------------------------------------
