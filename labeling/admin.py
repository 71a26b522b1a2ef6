import json

from django import forms
from django.contrib import admin
from django.urls import path
from django.utils.html import format_html, format_html_join

from jobs.models import Batch

from . import accuracy_views, bulk, push, selectors, store_admin
from .label_config import LabelConfigError, parse_label_config
from .models import LabelingProject, PredictionLog
from .predictions import uses_guided_choice
from .prompts import TemplateError, check_template, effective_templates, preview


class LabelingProjectForm(forms.ModelForm):
    class Meta:
        model = LabelingProject
        fields = (
            "title",
            "ls_project",
            "ls_project_id",
            "ls_hostname",
            "ls_access_token",
            "label_config",
            "model",
            "prompt_templates",
            "sample_task_data",
            "temperature",
            "max_tokens",
            "seed",
            "predictor",
            "few_shot_k",
            "embedding_model",
            "train_after_ground_truth",
        )
        widgets = {"ls_access_token": forms.PasswordInput(render_value=True)}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # A post without them (an older form, a script) keeps the project's values.
        for name in ("predictor", "few_shot_k"):
            self.fields[name].required = False

    def clean_predictor(self):
        return self.cleaned_data.get("predictor") or self.instance.predictor

    def clean_few_shot_k(self):
        value = self.cleaned_data.get("few_shot_k")
        return self.instance.few_shot_k if value is None else value

    def clean(self):
        cleaned = super().clean()
        xml, templates = cleaned.get("label_config"), cleaned.get("prompt_templates")
        if xml is None:
            return cleaned
        try:
            config = parse_label_config(xml)
        except LabelConfigError as exc:
            self.add_error("label_config", str(exc))
            return cleaned
        if cleaned.get("predictor") == "embedding" and not uses_guided_choice(config):
            self.add_error(
                "predictor", "The embedding predictor needs a config with one single-choice Choices control only."
            )
        if templates is not None and not isinstance(templates, dict):
            self.add_error("prompt_templates", "Give an object: {control name: template}.")
            return cleaned
        controls = {c.name: c for c in config.controls}
        for name, template in (templates or {}).items():
            if name not in controls:
                self.add_error("prompt_templates", f"{name!r} is not a control of the config ({', '.join(controls)}).")
            elif not isinstance(template, str):
                self.add_error("prompt_templates", f"The template of {name!r} must be a string.")
            else:
                try:
                    check_template(config, controls[name], template)
                except TemplateError as exc:
                    self.add_error("prompt_templates", f"{name}: {exc}")
        return cleaned


class PredictionInline(admin.TabularInline):
    model = PredictionLog
    fields = readonly_fields = ("created_at", "task_id", "result", "score", "latency_ms", "model_version", "error")
    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = True
    verbose_name_plural = "recent predictions"

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        parent_id = request.resolver_match.kwargs.get("object_id") if request.resolver_match else None
        if parent_id is None:
            return queryset.none()
        ids = [p.id for p in selectors.recent_predictions(project=parent_id)]
        return queryset.filter(id__in=ids).order_by("-created_at")


@admin.register(LabelingProject)
class LabelingProjectAdmin(admin.ModelAdmin):
    form = LabelingProjectForm
    list_display = ("__str__", "ls_project_id", "model", "model_version", "ls_hostname", "updated_at")
    list_select_related = ("model",)
    search_fields = ("title", "ls_project")
    readonly_fields = (
        "model_version",
        "controls",
        "templates_in_use",
        "prompt_preview",
        "created_at",
        "updated_at",
        "annotation_store",
        "ground_truth_revision",
        "ls_deleted_at",
        "ls_updated_at",
    )
    fieldsets = (
        (None, {"fields": ("title", "ls_project", "ls_project_id", "ls_hostname", "ls_access_token")}),
        ("Labeling config", {"fields": ("label_config", "controls")}),
        (
            "Model and prompts",
            {
                "fields": (
                    "model",
                    "model_version",
                    "prompt_templates",
                    "templates_in_use",
                    "sample_task_data",
                    "prompt_preview",
                    "temperature",
                    "max_tokens",
                    "seed",
                )
            },
        ),
        (
            "Learning from ground truth",
            {
                "fields": ("predictor", "few_shot_k", "embedding_model"),
                "description": "Few-shot examples and the embedding predictor need the embedding model on a worker "
                "(or on-demand swaps); see the README, Label Studio: pre-annotation that learns.",
            },
        ),
        (
            "Annotations from Label Studio",
            {
                "fields": (
                    "annotation_store",
                    "ground_truth_revision",
                    "train_after_ground_truth",
                    "ls_deleted_at",
                    "ls_updated_at",
                ),
                "description": "Filled by Label Studio's webhooks (README: Label Studio loop) or Sync now.",
            },
        ),
        ("Times", {"fields": ("created_at", "updated_at")}),
    )
    inlines = [PredictionInline]
    actions = [bulk.retrieve_predictions_action, store_admin.sync_action, store_admin.training_action]
    # Adds the "Accuracy" button to the project's page.
    change_form_template = "admin/labeling/project_change_form.html"

    def get_urls(self):
        page = self.admin_site.admin_view(self.accuracy_view)
        accuracy = path("<int:object_id>/accuracy/", page, name="labeling_labelingproject_accuracy")
        sync = path(
            "<int:object_id>/sync/",
            self.admin_site.admin_view(self.sync_view),
            name="labeling_labelingproject_sync",
        )
        return [accuracy, sync, *super().get_urls()]

    def sync_view(self, request, object_id):
        return store_admin.sync_view(self, request, object_id)

    @admin.display(description="annotation store")
    def annotation_store(self, obj):
        return store_admin.loop_summary(obj)

    def accuracy_view(self, request, object_id):
        return accuracy_views.accuracy_page(request, self, object_id)

    def _config(self, obj):
        try:
            return obj.parsed_config()
        except LabelConfigError:
            return None

    @admin.display(description="controls")
    def controls(self, obj):
        config = self._config(obj)
        if config is None:
            return "The config does not parse."
        predicted = format_html_join(
            "", "<li>{} ({}): {}</li>", ((c.name, c.tag, ", ".join(c.labels) or "-") for c in config.controls)
        )
        skipped = format_html_join(
            "", "<li>{} ({}): left out, {}</li>", ((s.name, s.tag, s.reason) for s in config.skipped)
        )
        return format_html("<ul>{}{}</ul>", predicted, skipped)

    @admin.display(description="templates in use")
    def templates_in_use(self, obj):
        config = self._config(obj)
        if config is None:
            return "-"
        text = json.dumps(effective_templates(config, obj.prompt_templates), indent=2, ensure_ascii=False)
        return format_html("<pre style='white-space: pre-wrap'>{}</pre>", text)

    @admin.display(description="prompt preview")
    def prompt_preview(self, obj):
        config = self._config(obj)
        if config is None:
            return "-"
        text = preview(config, obj.prompt_templates, obj.sample_task_data or None)
        return format_html("<pre style='white-space: pre-wrap'>{}</pre>", text)


@admin.register(PredictionLog)
class PredictionLogAdmin(admin.ModelAdmin):
    list_display = ("created_at", "project", "task_id", "score", "latency_ms", "model_version", "failed")
    list_filter = ("project", "model_version", ("error", admin.EmptyFieldListFilter))
    list_select_related = ("project",)
    search_fields = ("task_id",)
    readonly_fields = [f.name for f in PredictionLog._meta.fields]

    @admin.display(boolean=True)
    def failed(self, obj):
        return bool(obj.error)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


# jobs may not import labeling, so the Batch admin (registered by jobs, an earlier
# app in INSTALLED_APPS) gets its Label Studio action from here.
_batch_admin = admin.site.get_model_admin(Batch)
_batch_admin.actions = [*_batch_admin.actions, push.push_batches_action]
