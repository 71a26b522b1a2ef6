import hashlib
import json

from django.db import models

from .label_config import LabelConfigError, parse_label_config
from .prompts import effective_templates


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
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "labeling project"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(temperature__gte=0, temperature__lte=2), name="labeling_temperature_range"
            ),
            models.CheckConstraint(condition=models.Q(max_tokens__gte=1), name="labeling_max_tokens_positive"),
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

    def compute_model_version(self):
        digest = hashlib.sha256(
            json.dumps({"config": self.label_config, "templates": self.templates()}, sort_keys=True).encode()
        ).hexdigest()[:8]
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
