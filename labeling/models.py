import hashlib
import json

from django.conf import settings
from django.db import models

from .label_config import LabelConfigError, parse_label_config
from .prompts import effective_templates

MAX_FEW_SHOT_K = 16


class LabelingProject(models.Model):
    """A Label Studio project this backend pre-annotates: its config, the model
    that answers and how it is asked."""

    ls_project = models.CharField(
        max_length=100,
        unique=True,
        help_text='Label Studio\'s project key "<id>.<created_at>", as /setup and /predict send it.',
    )
    ls_project_id = models.PositiveBigIntegerField(db_index=True, help_text="The project's id in Label Studio.")
    title = models.CharField(max_length=200, blank=True)
    label_config = models.TextField(help_text="The project's labeling config (XML), as Label Studio last sent it.")
    model = models.ForeignKey(
        "workers.RegisteredModel",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="labeling_projects",
        help_text="The model that predicts; empty: none can (predictions answer 503).",
    )
    prompt_templates = models.JSONField(
        default=dict,
        blank=True,
        help_text="{control name: template}; placeholders like {text} and {labels}. Missing controls use the default.",
    )
    temperature = models.FloatField(default=0.0)
    max_tokens = models.PositiveIntegerField(default=512, help_text="Upper bound of generated tokens per task.")
    seed = models.BigIntegerField(null=True, blank=True)
    model_version = models.CharField(max_length=300, editable=False, blank=True)
    sample_task_data = models.JSONField(
        default=dict,
        blank=True,
        help_text="Task data the prompt preview uses: the first task predicted, or any you enter.",
    )
    ls_hostname = models.CharField(max_length=500, blank=True, help_text="Label Studio's URL, from /setup.")
    ls_access_token = models.CharField(
        max_length=500, blank=True, help_text="The project owner's API token, from /setup (for writing predictions)."
    )
    train_after_ground_truth = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Export training data after this many new ground-truth annotations; empty: off.",
    )
    ground_truth_revision = models.PositiveIntegerField(
        default=0, editable=False, help_text="Goes up on every ground-truth change (caches key on it)."
    )
    predictor = models.CharField(
        max_length=20,
        choices=[
            ("llm", "LLM (the model and its prompts)"),
            ("embedding", "Embedding predictor (no LLM; learns from ground truth; one single Choices control)"),
        ],
        default="llm",
        help_text="What /predict answers with.",
    )
    few_shot_k = models.PositiveSmallIntegerField(
        default=0,
        help_text=f"LLM: the k most similar ground-truth examples go into each prompt (0: off, max {MAX_FEW_SHOT_K}).",
    )
    embedding_model = models.ForeignKey(
        "workers.RegisteredModel",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="labeling_embedding_projects",
        limit_choices_to={"runner": "pooling"},
        help_text="Embeds texts for few-shot examples and the embedding predictor; empty: LABEL_STUDIO_EMBEDDING_MODEL",
    )
    ls_deleted_at = models.DateTimeField(
        null=True, blank=True, help_text="When Label Studio reported the project deleted (PROJECT_DELETED)."
    )
    ls_updated_at = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        help_text="Label Studio's updated_at of the project record last applied: an older one changes nothing.",
    )
    predictor_comparison = models.JSONField(
        default=dict,
        blank=True,
        editable=False,
        help_text="The latest predictor comparison of the accuracy page: status, times, error, learning-curve report.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "labeling project"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(temperature__gte=0, temperature__lte=2), name="labeling_temperature_range"
            ),
            models.CheckConstraint(condition=models.Q(max_tokens__gte=1), name="labeling_max_tokens_positive"),
            models.CheckConstraint(
                condition=models.Q(few_shot_k__lte=MAX_FEW_SHOT_K), name="labeling_few_shot_k_range"
            ),
        ]

    def __str__(self):
        return self.title or f"Label Studio project {self.ls_project_id}"

    def save(self, *args, **kwargs):
        self.model_version = self.compute_model_version()
        if kwargs.get("update_fields") is not None:
            kwargs["update_fields"] = {*kwargs["update_fields"], "model_version", "updated_at"}
        super().save(*args, **kwargs)

    def parsed_config(self):
        """The parsed label config; LabelConfigError when it cannot be parsed."""
        return parse_label_config(self.label_config)

    def templates(self):
        """The templates in use: the stored ones, defaults for the rest."""
        try:
            return effective_templates(self.parsed_config(), self.prompt_templates)
        except LabelConfigError:
            return dict(self.prompt_templates or {})

    def embedding_model_name(self):
        return self.embedding_model.name if self.embedding_model else settings.LABEL_STUDIO_EMBEDDING_MODEL

    def compute_model_version(self):
        if self.predictor == "embedding":
            digest = hashlib.sha256(self.label_config.encode()).hexdigest()[:8]
            return f"{self.embedding_model_name()}@blend@{digest}"
        described = {"config": self.label_config, "templates": self.templates()}
        if self.few_shot_k:
            # Zero-shot projects keep the version they had before few-shot existed.
            described["few_shot"] = {"k": self.few_shot_k, "embedding_model": self.embedding_model_name()}
        digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.model.name if self.model else 'no-model'}@{digest}"


class PredictionLog(models.Model):
    """One prediction sent to Label Studio (or the failure in its place)."""

    project = models.ForeignKey(LabelingProject, on_delete=models.CASCADE, related_name="predictions")
    task_id = models.BigIntegerField(null=True, help_text="Label Studio's task id.")
    result = models.JSONField(default=list)
    score = models.FloatField(null=True)
    model_version = models.CharField(max_length=300)
    latency_ms = models.PositiveIntegerField(help_text="Time of the whole /predict call this task was part of.")
    error = models.TextField(blank=True, help_text="Why the result is empty, when generation failed.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "prediction"
        indexes = [
            # The admin's recent predictions of a project.
            models.Index(fields=["project", "-created_at"], name="prediction_project_recent"),
        ]

    def __str__(self):
        return f"task {self.task_id} ({self.model_version})"


class WebhookEvent(models.Model):
    """One delivery from Label Studio, stored as received before anything is done with it."""

    class Source(models.TextChoices):
        WEBHOOK = "webhook", "webhook (/v1/webhooks/label-studio)"
        BACKEND = "backend", "ML backend (/labelstudio/webhook)"

    class Status(models.TextChoices):
        RECEIVED = "received"
        PROCESSED = "processed"
        FAILED = "failed"
        IGNORED = "ignored"

    body = models.BinaryField(help_text="The request body, byte for byte.")
    action = models.CharField(max_length=100, help_text="The body's `action`, e.g. ANNOTATION_CREATED.")
    ls_project_id = models.BigIntegerField(
        null=True, blank=True, help_text="The Label Studio project id in the body, when there is one."
    )
    source = models.CharField(max_length=20, choices=Source.choices, default=Source.WEBHOOK)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.RECEIVED)
    error = models.TextField(blank=True, help_text="Why processing failed, or why the event was ignored.")
    attempts = models.PositiveIntegerField(default=0, help_text="How many times processing ran.")
    processed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "webhook event"
        indexes = [
            # Admin's list filtered by status (failed ones to re-process), newest first.
            models.Index(fields=["status", "-created_at"], name="webhook_event_status"),
            # A project's events, newest first.
            models.Index(fields=["ls_project_id", "-created_at"], name="webhook_event_project"),
        ]

    def __str__(self):
        return f"{self.action} #{self.pk}"


class LabelingTask(models.Model):
    """A Label Studio task as last seen (webhook or sync)."""

    project = models.ForeignKey(LabelingProject, on_delete=models.CASCADE, related_name="tasks")
    ls_task_id = models.BigIntegerField(help_text="The task's id in Label Studio.")
    data = models.JSONField(default=dict)
    meta = models.JSONField(default=dict, blank=True)
    ls_created_at = models.DateTimeField(null=True, blank=True)
    ls_updated_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True, help_text="When Label Studio said it was deleted.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "labeling task"
        constraints = [
            models.UniqueConstraint(fields=["project", "ls_task_id"], name="labeling_task_unique_per_project"),
        ]

    def __str__(self):
        return f"task {self.ls_task_id}"


class Annotation(models.Model):
    """A human annotation from Label Studio, checked against the project's label config.

    `ground_truth` is the last word on the matter: Label Studio's flag when it changes
    (webhook or sync), or a mark/unmark here (admin, API)."""

    project = models.ForeignKey(LabelingProject, on_delete=models.CASCADE, related_name="annotations")
    task = models.ForeignKey(LabelingTask, on_delete=models.CASCADE, related_name="annotations")
    ls_annotation_id = models.BigIntegerField(help_text="The annotation's id in Label Studio.")
    result = models.JSONField(default=list)
    completed_by = models.BigIntegerField(null=True, blank=True, help_text="Label Studio user id.")
    was_cancelled = models.BooleanField(default=False, help_text="Skipped/cancelled in Label Studio.")
    ls_ground_truth = models.BooleanField(default=False, help_text="Label Studio's ground_truth flag as last seen.")
    ground_truth = models.BooleanField(default=False)
    ground_truth_at = models.DateTimeField(null=True, blank=True, help_text="When it last became ground truth.")
    valid = models.BooleanField(default=True, help_text="Fits the project's label config.")
    invalid_reason = models.TextField(blank=True)
    ls_created_at = models.DateTimeField(null=True, blank=True)
    ls_updated_at = models.DateTimeField(
        null=True, blank=True, help_text="Label Studio's updated_at; older updates than this are ignored."
    )
    deleted_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "annotation"
        constraints = [
            models.UniqueConstraint(
                fields=["project", "ls_annotation_id"], name="labeling_annotation_unique_per_project"
            ),
            models.CheckConstraint(
                condition=~models.Q(ground_truth=True, was_cancelled=True),
                name="labeling_annotation_cancelled_not_ground_truth",
            ),
            models.CheckConstraint(
                condition=models.Q(ground_truth=False) | models.Q(ground_truth_at__isnull=False),
                name="labeling_annotation_ground_truth_dated",
            ),
        ]
        indexes = [
            # Accuracy, few-shot examples and training read a project's live ground truth.
            models.Index(
                fields=["project", "task"],
                condition=models.Q(ground_truth=True, deleted_at__isnull=True),
                name="annotation_ground_truth",
            ),
            # A task's annotations (sync, admin).
            models.Index(fields=["task", "ls_annotation_id"], name="annotation_task"),
        ]

    def __str__(self):
        return f"annotation {self.ls_annotation_id}"


class LabelStudioPrediction(models.Model):
    """A prediction stored in Label Studio (pulled by sync), whoever made it."""

    project = models.ForeignKey(LabelingProject, on_delete=models.CASCADE, related_name="ls_predictions")
    task = models.ForeignKey(LabelingTask, on_delete=models.CASCADE, related_name="ls_predictions")
    ls_prediction_id = models.BigIntegerField(help_text="The prediction's id in Label Studio.")
    result = models.JSONField(default=list)
    score = models.FloatField(null=True, blank=True)
    model_version = models.CharField(max_length=300, blank=True)
    ls_created_at = models.DateTimeField(null=True, blank=True)
    ls_updated_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "Label Studio prediction"
        constraints = [
            models.UniqueConstraint(
                fields=["project", "ls_prediction_id"], name="labeling_ls_prediction_unique_per_project"
            ),
        ]
        indexes = [
            # Accuracy reads a project's predictions of one model_version.
            models.Index(fields=["project", "model_version", "task"], name="ls_prediction_version"),
        ]

    def __str__(self):
        return f"prediction {self.ls_prediction_id} ({self.model_version})"


class TrainingRun(models.Model):
    """One fine-tuning export of a project's ground truth and accepted annotations."""

    class Trigger(models.TextChoices):
        START_TRAINING = "start_training", "START_TRAINING from Label Studio"
        THRESHOLD = "threshold", "new ground truth reached the project's threshold"
        MANUAL = "manual"

    class Status(models.TextChoices):
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    project = models.ForeignKey(LabelingProject, on_delete=models.CASCADE, related_name="training_runs")
    trigger = models.CharField(max_length=20, choices=Trigger.choices)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.RUNNING)
    model_version = models.CharField(max_length=300, blank=True, help_text="The project's model_version (prompts).")
    ground_truth_revision = models.PositiveIntegerField(default=0)
    examples = models.PositiveIntegerField(default=0, help_text="Lines in the file.")
    ground_truth_count = models.PositiveIntegerField(default=0, help_text="Of which ground truth.")
    skipped = models.PositiveIntegerField(
        default=0, help_text="Accepted annotations left out (no text for the prompt, nothing to answer)."
    )
    file = models.ForeignKey(
        "jobs.File", null=True, blank=True, on_delete=models.SET_NULL, related_name="training_runs"
    )
    event = models.ForeignKey(
        WebhookEvent, null=True, blank=True, on_delete=models.SET_NULL, related_name="training_runs"
    )
    error = models.TextField(blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "training run"
        indexes = [
            # The threshold check reads a project's latest run.
            models.Index(fields=["project", "-created_at"], name="training_run_project_recent"),
        ]

    def __str__(self):
        return f"training run {self.pk} ({self.trigger}, {self.status})"


class TextEmbedding(models.Model):
    """The vector one embedding model gives one text. Keyed by the text's hash, so a
    ground-truth example and a task to predict with the same text share it, and an
    edited text gets a new one."""

    model_name = models.CharField(max_length=200, help_text="The registered embedding model's name.")
    text_sha256 = models.CharField(max_length=64)
    vector = models.BinaryField(help_text="float32, little-endian.")
    dimensions = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "text embedding"
        constraints = [
            models.UniqueConstraint(fields=["model_name", "text_sha256"], name="labeling_text_embedding_unique"),
        ]

    def __str__(self):
        return f"{self.model_name} {self.text_sha256[:12]}"
