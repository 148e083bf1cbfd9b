"""The one settings module. Everything that differs between a laptop and production comes from the
environment: DATABASE_URL, REDIS_URL / CELERY_BROKER_URL, SECRET_KEY, DEBUG, ALLOWED_HOSTS, ARTIFACT_ROOT.

Local defaults are safe: an embedded SQLite file, DEBUG off, a secret generated once into var/.
"""
from __future__ import annotations

import secrets
from datetime import timedelta
from pathlib import Path

import dj_database_url

from .env import envbool, envint, envlist, envstr

BASE_DIR = Path(__file__).resolve().parent.parent.parent
VAR_DIR = Path(envstr("VAR_DIR", str(BASE_DIR / "var")))


def _local_secret_key() -> str:
    """A per-checkout secret, generated once, so no default key is ever shared between installs."""
    path = VAR_DIR / "secret_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


DEBUG = envbool("DEBUG", False)
SECRET_KEY = envstr("SECRET_KEY") or _local_secret_key()
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    # First, so the labeler UI's registration/ templates (login, password change) win over the admin's.
    "annotation",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "knox",
    "axes",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
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
    "annotation.middleware.ContentSecurityPolicyMiddleware",
    "annotation.middleware.RequestLogMiddleware",
    "annotation.middleware.DatabaseUnavailableMiddleware",
    "axes.middleware.AxesMiddleware",  # last: answers a locked-out login attempt
]

ROOT_URLCONF = "rlhf_platform.urls"
WSGI_APPLICATION = "rlhf_platform.wsgi.application"
ASGI_APPLICATION = "rlhf_platform.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

# --- Database -------------------------------------------------------------------------------------
DATABASE_URL = envstr("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}")
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=envint("DB_CONN_MAX_AGE", 60))}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Django's backend, with writers queued for the write lock instead of polling for it (see its docstring).
    DATABASES["default"]["ENGINE"] = "rlhf_platform.sqlite_backend"
    if not DATABASE_URL.startswith("sqlite://:memory:"):
        Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    DATABASES["default"]["OPTIONS"] = {
        # Every transaction takes the write lock at BEGIN, so SQLite serialises writers instead of
        # failing with "database is locked" when a reader upgrades to a writer mid-transaction.
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=30000;",
    }
    # Tests share one file database between threads (the in-memory default is per connection).
    DATABASES["default"]["TEST"] = {"NAME": envstr("SQLITE_TEST_NAME", str(VAR_DIR / "test-db.sqlite3"))}
else:
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Celery ---------------------------------------------------------------------------------------
REDIS_URL = envstr("REDIS_URL", "redis://127.0.0.1:6379/0")
CELERY_BROKER_URL = envstr("CELERY_BROKER_URL", REDIS_URL)
CELERY_RESULT_BACKEND = envstr("CELERY_RESULT_BACKEND", REDIS_URL)
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {"annotation.tasks.run_training_job": {"queue": "training"}}
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# A message whose worker died unacknowledged is redelivered once the visibility timeout passes. This is only
# a backstop: the job's heartbeat and the sweep below find a dead worker within minutes.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": envint("CELERY_VISIBILITY_TIMEOUT", 3600)}
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_EXPIRES = 24 * 3600
CELERY_BEAT_SCHEDULE = {
    "expire-leases": {"task": "annotation.tasks.expire_leases", "schedule": 300.0},
    "purge-expired-tokens": {"task": "annotation.tasks.purge_expired_tokens", "schedule": 3600.0},
    "requeue-lost-jobs": {"task": "annotation.tasks.requeue_lost_jobs", "schedule": 120.0},
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

ARTIFACT_ROOT = Path(envstr("ARTIFACT_ROOT", str(VAR_DIR / "artifacts")))
# The largest file an import upload (the API, the project page) takes; manage.py import_data has no limit.
# Uploads over FILE_UPLOAD_MAX_MEMORY_SIZE (Django's 2.5 MB) are spooled to a temporary file, never held in
# memory, so this bounds disk and request time, not memory.
IMPORT_MAX_UPLOAD_MB = envint("IMPORT_MAX_UPLOAD_MB", 512)
READY_MIN_FREE_GB = float(envstr("READY_MIN_FREE_GB", "1"))  # /readyz fails below this much free disk there
# A running job's worker writes a heartbeat every quarter of this; once it is older than this, the worker is
# taken to be dead: the periodic sweep requeues the job (it resumes from its checkpoint) or, past
# TRAINING_JOB_MAX_ATTEMPTS claims, fails it. A dead worker is noticed within STALE + SWEEP seconds.
TRAINING_JOB_STALE_SECONDS = envint("TRAINING_JOB_STALE_SECONDS", 120)
TRAINING_JOB_SWEEP_SECONDS = envint("TRAINING_JOB_SWEEP_SECONDS", 60)
TRAINING_JOB_MAX_ATTEMPTS = envint("TRAINING_JOB_MAX_ATTEMPTS", 3)
# torch CPU threads per training job; 0 = the CPUs the worker may really use (affinity and cgroup quota).
# scripts/run.sh, whose web server shares the machine, leaves it one core.
TRAINING_THREADS = envint("TRAINING_THREADS", 0)
# A sweep that waits longer than its period (the only worker busy training) is dropped, not piled up.
CELERY_BEAT_SCHEDULE["sweep-dead-jobs"] = {"task": "annotation.tasks.sweep_dead_jobs",
                                           "schedule": float(TRAINING_JOB_SWEEP_SECONDS),
                                           "options": {"expires": float(TRAINING_JOB_SWEEP_SECONDS)}}

# --- Auth, i18n, static ---------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
if envbool("FAST_PASSWORD_HASHER", False):
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(envstr("STATIC_ROOT", str(VAR_DIR / "static")))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
if DEBUG:
    STORAGES["staticfiles"] = {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}

SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = envbool("SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
# Behind HTTPS (production): SECURE_SSL_REDIRECT=true, SECURE_HSTS_SECONDS=31536000, SECURE_COOKIES=true, and
# TRUST_X_FORWARDED_PROTO=true when a proxy terminates TLS. Off by default: the local server is plain HTTP.
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", False)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]  # the container's own health checks speak HTTP
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", False)
if envbool("TRUST_X_FORWARDED_PROTO", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- Logins and API tokens (annotation/auth.py says why knox and axes) --------------------------------
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = envint("LOGIN_FAILURE_LIMIT", 5)          # failed logins of one username from one address
AXES_COOLOFF_TIME = timedelta(minutes=envint("LOGIN_COOLOFF_MINUTES", 15))  # then locked out this long
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]        # a stranger cannot lock a user out everywhere
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "annotation.auth.lockout_response"    # 429: JSON under /api/, a page elsewhere
AXES_VERBOSE = False
REST_KNOX = {
    "TOKEN_TTL": timedelta(hours=envint("API_TOKEN_TTL_HOURS", 30 * 24)),
    "AUTO_REFRESH": False,          # no write on every request; make a new token before it expires
    "TOKEN_LIMIT_PER_USER": envint("API_TOKENS_PER_USER", 20),
    "USER_SERIALIZER": None,
    "AUTH_HEADER_PREFIX": "Token",
}
# Seconds a process remembers an authenticated token (annotation.auth): a revocation is immediate in the process
# that revokes, and reaches the other processes within this time. 0 turns the cache off.
API_TOKEN_CACHE_SECONDS = envint("API_TOKEN_CACHE_SECONDS", 30)

# --- REST framework -------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "annotation.auth.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_THROTTLE_CLASSES": ["annotation.auth.WriteThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "writes": envstr("THROTTLE_WRITES", "1200/min"),  # per user: far above a person, below a runaway loop
        "login": envstr("THROTTLE_LOGIN", "20/min"),      # token requests per client address
    },
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "annotation.api.pagination.Pagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "annotation.api.errors.exception_handler",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"]
    + (["rest_framework.renderers.BrowsableAPIRenderer"] if DEBUG else []),
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}
SPECTACULAR_SETTINGS = {
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums",
                             "annotation.api.schema.document_errors"],  # every operation documents its errors
    "TITLE": "RLHF Loop API",
    "DESCRIPTION": "Collect demonstrations and rankings, and run SFT → RM → PPO training rounds.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Swagger UI is served from the vendored sidecar package: nothing loads from a CDN.
    "ENUM_NAME_OVERRIDES": {
        "ModelStageEnum": "annotation.models.ModelVersion.Stage",
        "JobStageEnum": "annotation.models.JobStage",
        "RoundStatusEnum": "annotation.models.Round.Status",
        "JobStatusEnum": "annotation.models.TrainingJob.Status",
        "InvitationStatusEnum": "annotation.models.Invitation.Status",
        "TaskStatusEnum": "annotation.models.Task.Status",
    },
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# LOG_FORMAT=json (docker-compose sets it): one JSON object per line, with the request fields of
# annotation.middleware.RequestLogMiddleware (method, path, status, ms, user) where a request logged it.
LOG_FORMAT = envstr("LOG_FORMAT", "plain")
LOG_REQUESTS = envbool("LOG_REQUESTS", True)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {"()": "pythonjsonlogger.json.JsonFormatter",
                 "fmt": "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s",
                 "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"}},
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": envstr("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "INFO"}, "axes": {"level": "WARNING"}},  # axes logs every login
}
