from django.contrib import admin

from .models import RegisteredModel


@admin.register(RegisteredModel)
class RegisteredModelAdmin(admin.ModelAdmin):
    list_display = ["name", "runner", "path", "max_model_len", "dtype", "gpu_memory_utilization", "is_active"]
    list_filter = ["runner", "is_active"]
    search_fields = ["name", "path"]
