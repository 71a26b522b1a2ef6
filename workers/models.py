import socket

import psutil
from django.conf import settings
from django.db import models
from django.utils import timezone

EMBEDDINGS_ENDPOINT = "/v1/embeddings"


class RegisteredModel(models.Model):
    """A model the workers can serve: the name requests use, a local path, and
    the engine arguments vLLM loads it with."""

    class Runner(models.TextChoices):
        GENERATE = "generate", "generate (chat, completions)"
        POOLING = "pooling", "pooling (embeddings)"

    class Dtype(models.TextChoices):
        AUTO = "auto"
        FLOAT32 = "float32"
        FLOAT16 = "float16"
        BFLOAT16 = "bfloat16"

    name = models.CharField(max_length=200, unique=True, help_text="The name requests put in `model`.")
    path = models.CharField(max_length=1000, help_text="Local directory holding the weights and tokenizer.")
    runner = models.CharField(max_length=10, choices=Runner.choices, default=Runner.GENERATE)
    max_model_len = models.PositiveIntegerField(null=True, blank=True, help_text="Context length; empty: the model's.")
    dtype = models.CharField(max_length=10, choices=Dtype.choices, default=Dtype.AUTO)
    gpu_memory_utilization = models.FloatField(default=0.9, help_text="Share of device memory vLLM may take (0-1].")
    tensor_parallel_size = models.PositiveIntegerField(default=1)
    extra_engine_args = models.JSONField(
        default=dict, blank=True, help_text='More keyword arguments for vllm.LLM, e.g. {"max_num_seqs": 128}.'
    )
    is_active = models.BooleanField(default=True, help_text="Inactive models are hidden from /v1/models and refused.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "model"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(gpu_memory_utilization__gt=0, gpu_memory_utilization__lte=1),
                name="model_gpu_memory_utilization_range",
            ),
        ]

    def __str__(self):
        return self.name

    @property
    def serves_embeddings(self):
        return self.runner == self.Runner.POOLING

    def serves(self, endpoint):
        """Whether the model answers this OpenAI path: a pooling model only embeddings, any other the rest."""
        return self.serves_embeddings == (endpoint == EMBEDDINGS_ENDPOINT)

    def engine_args(self):
        """Keyword arguments for vllm.LLM, as plain data (no vLLM import here)."""
        args = {
            "model": self.path,
            "served_model_name": self.name,
            "runner": self.runner,
            "dtype": self.dtype,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "tensor_parallel_size": self.tensor_parallel_size,
        }
        if self.max_model_len:
            args["max_model_len"] = self.max_model_len
        args.update(self.extra_engine_args or {})
        return args

    def to_openai(self):
        return {
            "id": self.name,
            "object": "model",
            "created": int(self.created_at.timestamp()),
            "owned_by": "vllm-batch",
        }


class Worker(models.Model):
    """One worker process of a cluster, as its heartbeat last described it."""

    class State(models.TextChoices):
        STARTING = "starting"
        IDLE = "idle"
        LOADING = "loading", "loading model"
        PROCESSING = "processing"
        STOPPING = "stopping"
        STOPPED = "stopped"
        # Found dead (killed, frozen, restarted by the watchdog): lost_at and lost_reason say when and why.
        LOST = "lost"

    class Freshness(models.TextChoices):
        ONLINE = "online"
        STALE = "stale"
        OFFLINE = "offline"

    name = models.CharField(max_length=200, unique=True, help_text="hostname:pid")
    hostname = models.CharField(max_length=200)
    pid = models.PositiveIntegerField()
    cluster_name = models.CharField(max_length=200, blank=True)
    state = models.CharField(max_length=12, choices=State.choices, default=State.STARTING)
    current_model = models.CharField(max_length=200, blank=True)
    current_batch = models.ForeignKey(
        "jobs.Batch", null=True, blank=True, on_delete=models.SET_NULL, db_constraint=False, related_name="+"
    )
    memory_kind = models.CharField(max_length=8, blank=True, help_text="'gpu' (pynvml) or 'host' (psutil).")
    memory_used = models.BigIntegerField(null=True, blank=True, help_text="Bytes: device memory, or the process RSS.")
    memory_total = models.BigIntegerField(null=True, blank=True, help_text="Bytes: device memory, or host memory.")
    host_memory_used = models.BigIntegerField(null=True, blank=True)
    realtime_url = models.CharField(max_length=200, blank=True, help_text="The worker's realtime endpoint.")
    realtime_token = models.CharField(max_length=64, blank=True, help_text="What the web sends to be let in.")
    unhealthy_reason = models.CharField(
        max_length=500, blank=True, help_text="Set by the worker's heartbeat when it is alive but stuck."
    )
    lost_at = models.DateTimeField(null=True, blank=True)
    lost_reason = models.CharField(max_length=500, blank=True)
    last_load_model = models.CharField(max_length=200, blank=True, help_text="The model this process loaded last.")
    last_load_seconds = models.FloatField(null=True, blank=True, help_text="How long that load took.")
    last_load_at = models.DateTimeField(null=True, blank=True)
    model_swaps = models.PositiveIntegerField(
        default=0, help_text="Batches that made this process unload one model to load another."
    )
    started_at = models.DateTimeField()
    last_seen = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [
            # The admin card and `worker status` list the recently seen workers.
            models.Index(fields=["-last_seen"], name="worker_last_seen_idx"),
        ]
        # The console's powers, apart from staff status: sending commands to worker
        # processes and reading the logs (which hold prompts and error details).
        permissions = [
            ("operate_worker", "Can restart, clear the GPU of and kill workers"),
            ("view_logs", "Can read the worker and web logs"),
        ]

    def __str__(self):
        return self.name

    def freshness(self, now=None):
        if self.state in (self.State.STOPPED, self.State.LOST):
            return self.Freshness.OFFLINE
        interval = settings.VLLM_BATCH["HEARTBEAT_SECONDS"]
        age = ((now or timezone.now()) - self.last_seen).total_seconds()
        if age > 6 * interval or not self.process_may_run():
            return self.Freshness.OFFLINE
        if age > 2 * interval:
            return self.Freshness.STALE
        return self.Freshness.ONLINE

    def is_local(self):
        return self.hostname == socket.gethostname()

    def process_may_run(self):
        """False when the worker was on this host and its process is gone."""
        if not self.is_local():
            return True
        return psutil.pid_exists(self.pid)


class WorkerCommand(models.Model):
    """An operator's order to a worker, carried through the database so it reaches
    workers on any host; the worker acts within one heartbeat and records the result."""

    class Action(models.TextChoices):
        RESTART = "restart"
        CLEAR_GPU = "clear_gpu", "clear GPU"
        KILL = "kill"

    class Status(models.TextChoices):
        PENDING = "pending"
        ACKNOWLEDGED = "acknowledged"
        DONE = "done"
        FAILED = "failed"

    # A pruned worker's commands stay, named by worker_name.
    worker = models.ForeignKey(Worker, null=True, on_delete=models.SET_NULL, related_name="commands")
    worker_name = models.CharField(max_length=200, blank=True)
    action = models.CharField(max_length=12, choices=Action.choices)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING)
    result = models.TextField(blank=True)
    requested_by = models.CharField(max_length=150, blank=True)
    reload_model = models.CharField(
        max_length=200, blank=True, help_text="Restart: the model the next worker process loads at start."
    )
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [
            # Each heartbeat looks for its worker's pending commands.
            models.Index(fields=["worker", "status"], name="worker_command_pending_idx"),
        ]

    def __str__(self):
        return f"{self.action} {self.worker_name or self.worker_id} ({self.status})"

    def save(self, *args, **kwargs):
        if self.worker is not None and not self.worker_name:
            self.worker_name = self.worker.name
        super().save(*args, **kwargs)

    @property
    def is_finished(self):
        return self.status in (self.Status.DONE, self.Status.FAILED)


class Supervisor(models.Model):
    """A `manage.py watchdog` process: the cluster it started, how often it had to
    restart it and why. State `failed`: the restart limit was reached and it gave up."""

    class State(models.TextChoices):
        RUNNING = "running"
        RESTARTING = "restarting"
        FAILED = "failed"
        STOPPED = "stopped"

    name = models.CharField(max_length=200, unique=True, help_text="hostname:pid of the watchdog")
    hostname = models.CharField(max_length=200)
    pid = models.PositiveIntegerField()
    cluster_name = models.CharField(max_length=200, blank=True)
    cluster_pid = models.PositiveIntegerField(null=True, blank=True, help_text="The qcluster it runs now.")
    state = models.CharField(max_length=12, choices=State.choices, default=State.RUNNING)
    restarts = models.PositiveIntegerField(default=0)
    last_reason = models.CharField(max_length=500, blank=True, help_text="Why it last restarted, or gave up.")
    last_restart_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField()
    last_check = models.DateTimeField()

    class Meta:
        verbose_name = "watchdog"

    def __str__(self):
        return self.name
