"""Writes for the model registry."""

from django.db import transaction

from .models import RegisteredModel


@transaction.atomic
def model_register(*, name, path, runner=RegisteredModel.Runner.GENERATE, **engine_fields):
    """Creates or updates the model `name`; returns (model, created)."""
    fields = {"path": str(path), "runner": runner, "is_active": True}
    fields.update({k: v for k, v in engine_fields.items() if v is not None})
    model, created = RegisteredModel.objects.update_or_create(name=name, defaults=fields)
    model.full_clean()
    return model, created
