"""vllm-batch settings, read from environment variables with safe defaults.

Embedded default: SQLite and the django-q2 ORM broker under ./var.
Production: DATABASE_URL (PostgreSQL) and REDIS_URL (Redis broker).

Every environment variable is read here and nowhere else; vllm-batch's own
settings are the VLLM_BATCH dict. Importing this module writes nothing: the var
directory and the secret key file are made when a process starts
(batchsite/startup.py).
"""

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name, default=""):
    file_path = os.environ.get(f"{name}_FILE")
    if file_path:
        return Path(file_path).read_text().strip()
    return os.environ.get(name, default)


def env_int(name, default):
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from None


def env_float(name, default):
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}") from None


def env_bool(name, default):
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, got {raw!r}")


def env_list(name, default=""):
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


def env_choice(name, default, choices):
    raw = env_str(name, default).strip().lower() or default
    if raw not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


VAR_DIR = Path(env_str("VLLM_BATCH_VAR_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DEBUG", False)
# Without SECRET_KEY (or SECRET_KEY_FILE), a per-installation key kept under var/,
# so a fresh laptop works without setup and the key survives restarts; the first
# process to start writes it (batchsite/startup.py).
SECRET_KEY_FILE = VAR_DIR / "secret_key"
SECRET_KEY = env_str("SECRET_KEY", "") or (SECRET_KEY_FILE.read_text().strip() if SECRET_KEY_FILE.exists() else "")

ALLOWED_HOSTS = [h for h in env_str("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",") if h]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    # Swagger UI's files for /docs/, served from here: the page works offline.
    "drf_spectacular_sidecar",
    "jobs",
    # Before django_q: workers/management/commands/qcluster.py extends its qcluster.
    "workers",
    "django_q",
    "labeling",
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
]

ROOT_URLCONF = "batchsite.urls"
WSGI_APPLICATION = "batchsite.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
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

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}"),
        conn_health_checks=True,
    )
}
# PostgreSQL: each web thread keeps its connection (checked before reuse) rather than
# paying a new connection's setup on every request (bench/load_bench.py compares both).
# Each kept connection counts against the server's max_connections: up to gunicorn's
# workers x threads, plus the cluster's processes.
DATABASES["default"]["CONN_MAX_AGE"] = env_int(
    "DATABASE_CONN_MAX_AGE", 600 if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" else 0
)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web server and the worker write to the same file; wait for the lock
    # instead of failing with "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
# The admin's CSS and JS are served by the web process itself (whitenoise), also
# without `collectstatic`; run it in production for compressed, cached files.
WHITENOISE_USE_FINDERS = True

# Uploaded and generated files. Names are generated by the server, never taken
# from a request.
FILES_ROOT = Path(env_str("VLLM_BATCH_FILES_ROOT", str(VAR_DIR / "files")))
STORAGES = {
    "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(FILES_ROOT)},
    },
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Several nodes share the files: a directory every node mounts at VLLM_BATCH_FILES_ROOT,
# or an S3 bucket through django-storages (installed apart; credentials from boto3's
# usual places: the environment, ~/.aws, an instance role).
S3_BUCKET = env_str("VLLM_BATCH_S3_BUCKET", "")
if S3_BUCKET:
    STORAGES["default"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": S3_BUCKET,
            "location": env_str("VLLM_BATCH_S3_PREFIX", "vllm-batch"),
            "endpoint_url": env_str("VLLM_BATCH_S3_ENDPOINT_URL", "") or None,
            "region_name": env_str("VLLM_BATCH_S3_REGION", "") or None,
            "file_overwrite": False,
        },
    }
# Uploads go to a temporary file on disk past this size, never whole into memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
FILE_UPLOAD_TEMP_DIR = None
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024

VLLM_BATCH = {
    # Database, files, logs and the embedded default's models, unless set apart.
    "VAR_DIR": VAR_DIR,
    # Limits, as OpenAI's Batch API documents them by default.
    "MAX_UPLOAD_BYTES": env_int("VLLM_BATCH_MAX_UPLOAD_BYTES", 512 * 1024 * 1024),
    "MAX_BATCH_REQUESTS": env_int("VLLM_BATCH_MAX_BATCH_REQUESTS", 50_000),
    "MAX_LINE_BYTES": env_int("VLLM_BATCH_MAX_LINE_BYTES", 16 * 1024 * 1024),
    "MAX_METADATA_PAIRS": 16,
    # Per API key: requests per second, minute, hour or day ("20/s"; empty: none).
    # Per owner (0: no limit): batches not yet finished, bytes of stored files,
    # realtime requests at once.
    "THROTTLE_RATE": env_str("VLLM_BATCH_THROTTLE_RATE", "50/s"),
    "MAX_OPEN_BATCHES": env_int("VLLM_BATCH_MAX_OPEN_BATCHES", 100),
    "MAX_STORED_BYTES": env_int("VLLM_BATCH_MAX_STORED_BYTES", 100 * 1024**3),
    "MAX_CONCURRENT_REALTIME": env_int("VLLM_BATCH_MAX_CONCURRENT_REALTIME", 32),
    # How often the cluster deletes files past their expires_after.
    "FILE_EXPIRY_MINUTES": env_int("VLLM_BATCH_FILE_EXPIRY_MINUTES", 10),
    # Requests handed to the engine at once; results and progress are saved per chunk.
    "CHUNK_SIZE": env_int("VLLM_BATCH_CHUNK_SIZE", 256),
    # A task works on one batch for at most this long, then queues its continuation,
    # so no task outlives the cluster timeout and batches take turns.
    "TASK_SLICE_SECONDS": env_int("VLLM_BATCH_TASK_SLICE_SECONDS", 600),
    # A batch whose worker has not saved progress for this long is taken over.
    "STALE_BATCH_SECONDS": env_int("VLLM_BATCH_STALE_BATCH_SECONDS", 300),
    # Dispatch (jobs/leases.py claim_next). The models this node's workers may load
    # (empty: any); a batch of another model waits for a node that may. A worker
    # keeps to the model it holds and swaps to another model's batch only once that
    # batch has waited this long (or no batch of the held model waits).
    "NODE_MODELS": frozenset(env_list("VLLM_BATCH_NODE_MODELS", "")),
    "AFFINITY_WAIT_SECONDS": env_float("VLLM_BATCH_AFFINITY_WAIT_SECONDS", 60.0),
    # A batch of more requests than this is split into ranges of this many, which
    # several workers holding its model run at once (0: never split; jobs/ranges.py).
    "SPLIT_REQUESTS": env_int("VLLM_BATCH_SPLIT_REQUESTS", 0),
    # The engine gets a batch's requests in blocks of this many, each block longest
    # expected output first, shared first messages together (0: file order).
    "RUN_ORDER_LOOKAHEAD": env_int("VLLM_BATCH_RUN_ORDER_LOOKAHEAD", 2048),
    "WATCHDOG_MINUTES": env_int("VLLM_BATCH_WATCHDOG_MINUTES", 1),
    # The Linux scheduling policy of vLLM's engine processes (workers/engine/cpu_policy.py):
    # idle: any other process that wants a CPU (the web answering, the database) gets
    # it at once, the engine takes the rest; normal: the engine competes as an equal.
    "ENGINE_CPU_POLICY": env_choice("VLLM_BATCH_ENGINE_CPU_POLICY", "idle", ("idle", "normal")),
    # Workers write their heartbeat row this often, from a thread.
    "HEARTBEAT_SECONDS": env_float("VLLM_BATCH_HEARTBEAT_SECONDS", 10.0),
    # A batch under which the engine's process dies is resumed on a new engine;
    # after this many deaths its remaining requests end as errors.
    "MAX_ENGINE_FAILURES": env_int("VLLM_BATCH_MAX_ENGINE_FAILURES", 3),
    # Self-healing. A batch whose validation or processing raised this many times
    # (or whose worker got stuck: a fresh lease, no progress for STUCK_MINUTES) ends.
    "MAX_BATCH_ATTEMPTS": env_int("VLLM_BATCH_MAX_BATCH_ATTEMPTS", 3),
    "STUCK_MINUTES": env_float("VLLM_BATCH_STUCK_MINUTES", 30.0),
    # `manage.py watchdog`: checks its cluster every WATCHDOG_INTERVAL s; a cluster
    # whose workers have not beaten for WATCHDOG_TIMEOUT_BEATS heartbeats is frozen
    # and killed; restarts wait WATCHDOG_BACKOFF_SECONDS doubling up to
    # WATCHDOG_BACKOFF_MAX_SECONDS, at most WATCHDOG_MAX_RESTARTS an hour.
    "WATCHDOG_INTERVAL": env_float("VLLM_BATCH_WATCHDOG_INTERVAL", 30.0),
    "WATCHDOG_TIMEOUT_BEATS": env_float("VLLM_BATCH_WATCHDOG_TIMEOUT_BEATS", 3.0),
    "WATCHDOG_BACKOFF_SECONDS": env_float("VLLM_BATCH_WATCHDOG_BACKOFF_SECONDS", 1.0),
    "WATCHDOG_BACKOFF_MAX_SECONDS": env_float("VLLM_BATCH_WATCHDOG_BACKOFF_MAX_SECONDS", 60.0),
    "WATCHDOG_MAX_RESTARTS": env_int("VLLM_BATCH_WATCHDOG_MAX_RESTARTS", 10),
    # Worker rows stopped or lost longer than this are deleted (their commands stay).
    "WORKER_PRUNE_HOURS": env_float("VLLM_BATCH_WORKER_PRUNE_HOURS", 24.0),
    # Completion webhooks (jobs/webhooks.py): tries per delivery, the first retry's
    # wait (doubling), the request timeout, and whether loopback/private/link-local
    # targets are allowed (off: only public addresses).
    "WEBHOOK_MAX_ATTEMPTS": env_int("VLLM_BATCH_WEBHOOK_MAX_ATTEMPTS", 6),
    "WEBHOOK_RETRY_SECONDS": env_float("VLLM_BATCH_WEBHOOK_RETRY_SECONDS", 30.0),
    "WEBHOOK_TIMEOUT": env_float("VLLM_BATCH_WEBHOOK_TIMEOUT", 10.0),
    "WEBHOOK_ALLOW_PRIVATE": env_bool("VLLM_BATCH_WEBHOOK_ALLOW_PRIVATE", False),
    # Realtime requests: default timeout (s); whether a request for a model no
    # worker holds makes a worker load it (between a batch's chunks) instead of
    # getting 503 model_not_loaded; and how long such a model stays loaded after
    # its last realtime request before batches may swap it out again.
    "REALTIME_TIMEOUT": env_float("VLLM_BATCH_REALTIME_TIMEOUT", 60.0),
    "REALTIME_SWAP": env_bool("VLLM_BATCH_REALTIME_SWAP", False),
    "REALTIME_SWAP_HOLD_SECONDS": env_float("VLLM_BATCH_REALTIME_SWAP_HOLD_SECONDS", 60.0),
    # Where each worker's realtime server listens (port 0: any free one); the
    # address is published as-is, so workers on other hosts need one the web reaches.
    "REALTIME_HOST": env_str("VLLM_BATCH_REALTIME_HOST", "127.0.0.1"),
    "REALTIME_PORT": env_int("VLLM_BATCH_REALTIME_PORT", 0),
    # The vllm.LLM arguments a registered model's extra_engine_args may set: tuning
    # only. Left out on purpose: trust_remote_code, hf_overrides, tokenizer,
    # download_dir, worker_cls, logits_processors and the like, which run or load
    # code from elsewhere. Checked in the admin, by register_model and at load.
    "ENGINE_ARGS_ALLOWED": frozenset(
        env_list(
            "VLLM_BATCH_ENGINE_ARGS_ALLOWED",
            "max_num_seqs,max_num_batched_tokens,enable_prefix_caching,enable_chunked_prefill,"
            "kv_cache_dtype,block_size,swap_space,cpu_offload_gb,enforce_eager,max_seq_len_to_capture,"
            "max_logprobs,seed,quantization,pipeline_parallel_size,disable_sliding_window,"
            "disable_cascade_attn,tokenizer_mode,max_parallel_loading_workers",
        )
    ),
    # vLLM's KV cache on a CPU host, in GiB (ignored on a GPU).
    "CPU_KVCACHE_GIB": env_int("VLLM_BATCH_CPU_KVCACHE_GIB", 2),
    # Where `manage.py worker status` checks that the web API answers.
    "API_URL": env_str("VLLM_BATCH_API_URL", "http://127.0.0.1:8000/v1"),
    # worker.log and web.log; each rolls over at LOG_MAX_BYTES and keeps
    # LOG_BACKUPS backups (worker.log.1 is the newest).
    "LOG_DIR": Path(env_str("VLLM_BATCH_LOG_DIR", str(VAR_DIR / "logs"))),
    "LOG_MAX_BYTES": env_int("VLLM_BATCH_LOG_MAX_BYTES", 10 * 1024 * 1024),
    "LOG_BACKUPS": env_int("VLLM_BATCH_LOG_BACKUPS", 7),
    # GET /ready answers 503 while no worker is online, unless this is false
    # (a web-only node behind a load balancer).
    "READY_REQUIRES_WORKER": env_bool("VLLM_BATCH_READY_REQUIRES_WORKER", True),
    # GET /metrics: allowed with `Authorization: Bearer <METRICS_TOKEN>` when one
    # is set, else only from the addresses of METRICS_ALLOWED_IPS.
    "METRICS_TOKEN": env_str("VLLM_BATCH_METRICS_TOKEN", ""),
    "METRICS_ALLOWED_IPS": frozenset(env_list("VLLM_BATCH_METRICS_ALLOWED_IPS", "127.0.0.1,::1")),
    # The per-model throughput gauge: batches finished in the last N minutes.
    "METRICS_THROUGHPUT_MINUTES": env_int("VLLM_BATCH_METRICS_THROUGHPUT_MINUTES", 60),
}

# Label Studio ML backend (/labelstudio/): the model new projects get (empty: the
# first active generation model), the inference timeout of one /predict (below
# Label Studio's 100 s), and optional basic auth that Label Studio sends when the
# backend is connected with it.
LABEL_STUDIO_MODEL = env_str("LABEL_STUDIO_MODEL", "")
LABEL_STUDIO_EMBEDDING_MODEL = env_str("LABEL_STUDIO_EMBEDDING_MODEL", "all-MiniLM-L6-v2")
LABEL_STUDIO_PREDICT_TIMEOUT = env_float("LABEL_STUDIO_PREDICT_TIMEOUT", 90.0)
LABEL_STUDIO_BACKEND_USERNAME = env_str("LABEL_STUDIO_BACKEND_USERNAME", "")
LABEL_STUDIO_BACKEND_PASSWORD = env_str("LABEL_STUDIO_BACKEND_PASSWORD", "")
# Where bulk predictions (manage.py labelstudio predict) are written: empty uses the
# hostname and token Label Studio sent in /setup for each project.
LABEL_STUDIO_URL = env_str("LABEL_STUDIO_URL", "")
LABEL_STUDIO_API_KEY = env_str("LABEL_STUDIO_API_KEY", "")
# Label Studio webhooks (POST /v1/webhooks/label-studio): the secrets a delivery's
# header must carry (comma-separated, several during a rotation; none: every
# delivery is refused), the header's name, and the largest body stored.
LABEL_STUDIO_WEBHOOK_SECRETS = [s.strip() for s in env_str("LABEL_STUDIO_WEBHOOK_SECRETS", "").split(",") if s.strip()]
LABEL_STUDIO_WEBHOOK_HEADER = env_str("LABEL_STUDIO_WEBHOOK_HEADER", "X-Webhook-Secret")
LABEL_STUDIO_WEBHOOK_MAX_BYTES = env_int("LABEL_STUDIO_WEBHOOK_MAX_BYTES", 5 * 1024 * 1024)
# Whether the web process applies each stored event right after answering (besides
# the django-q task, which waits while the cluster's worker runs a batch slice).
LABEL_STUDIO_EVENTS_INLINE = env_bool("LABEL_STUDIO_EVENTS_INLINE", True)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["jobs.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "rest_framework.parsers.JSONParser",
        "rest_framework.parsers.MultiPartParser",
        "rest_framework.parsers.FormParser",
    ],
    "EXCEPTION_HANDLER": "batchsite.errors.openai_exception_handler",
    "DEFAULT_THROTTLE_CLASSES": ["jobs.throttling.ApiKeyRateThrottle"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "vllm-batch API",
    "DESCRIPTION": "OpenAI-compatible Files and Batches API served by vLLM workers.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "jobs.schema.add_error_responses"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

REDIS_URL = env_str("REDIS_URL", "")
# Throttling's and the realtime quota's counters: shared through Redis when there
# is one, else each process's own memory.
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
Q_CLUSTER = {
    "name": env_str("Q_CLUSTER_NAME", "vllm-batch"),
    # One worker per cluster: each worker process holds its own engine, and a GPU
    # node runs one cluster.
    "workers": env_int("Q_WORKERS", 1),
    # The engine process spawns children (vLLM's EngineCore), which daemonic
    # processes may not have.
    "daemonize_workers": False,
    "timeout": env_int("Q_TIMEOUT", 3600),
    "retry": env_int("Q_RETRY", 4000),
    "max_attempts": 1,
    "recycle": env_int("Q_RECYCLE", 1_000_000),
    "queue_limit": 4,
    "catch_up": False,
    "save_limit": env_int("Q_SAVE_LIMIT", 1000),
    "ack_failures": True,
    # How often the ORM broker looks for new tasks: a batch waits up to this long
    # before a worker takes it (the Redis broker blocks instead of polling).
    "poll": env_float("Q_POLL", 0.2),
    "guard_cycle": env_float("Q_GUARD_CYCLE", 0.5),
    "label": "Task queue",
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"

LOG_LEVEL = env_str("LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"batch_id": {"()": "workers.console.logs.BatchIdFilter"}},
    "formatters": {
        "line": {"format": "%(asctime)s %(levelname)s [%(process)d] [%(batch_id)s] %(name)s: %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "line", "filters": ["batch_id"]},
        # worker.log for the qcluster processes, web.log for the rest.
        "file": {"()": "workers.console.logs.file_handler", "formatter": "line", "filters": ["batch_id"]},
    },
    # Our loggers and django-q's pass their records up to the root's handlers; other
    # libraries only their warnings. vLLM keeps its own handler on stdout (its "vllm"
    # logger does not propagate).
    "root": {"handlers": ["console", "file"], "level": "WARNING"},
    "loggers": {name: {"level": LOG_LEVEL} for name in ("jobs", "workers", "labeling", "django-q")},
}

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False
X_FRAME_OPTIONS = "DENY"

# HTTPS, behind a proxy that terminates TLS (deploy/env.example). VLLM_BATCH_HTTPS
# turns on secure cookies, the redirect to https and HSTS; the proxy must set
# X-Forwarded-Proto (and strip it from clients), or Django cannot tell https apart.
HTTPS = env_bool("VLLM_BATCH_HTTPS", False)
if env_bool("VLLM_BATCH_BEHIND_PROXY", HTTPS):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Origins the admin's forms are posted from, e.g. https://batch.example.org.
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_SSL_REDIRECT = env_bool("VLLM_BATCH_SSL_REDIRECT", HTTPS)
SECURE_HSTS_SECONDS = env_int("VLLM_BATCH_HSTS_SECONDS", 31_536_000 if HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("VLLM_BATCH_HSTS_INCLUDE_SUBDOMAINS", HTTPS)
SECURE_HSTS_PRELOAD = env_bool("VLLM_BATCH_HSTS_PRELOAD", False)
if not SECURE_HSTS_PRELOAD:
    # Preloading is a lasting commitment of the whole domain: the operator's choice,
    # not a default `check --deploy` should push for.
    SILENCED_SYSTEM_CHECKS = ["security.W021"]
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
