"""Requests per API key (DRF throttling, VLLM_BATCH["THROTTLE_RATE"]). The counts live
in Django's cache: Redis with REDIS_URL, shared by every web process; without it
each web process counts on its own."""

from django.conf import settings
from rest_framework.throttling import SimpleRateThrottle

from .models import ApiKey


class ApiKeyRateThrottle(SimpleRateThrottle):
    scope = "api_key"

    def get_rate(self):
        return settings.VLLM_BATCH["THROTTLE_RATE"] or None

    def get_cache_key(self, request, view):
        if not isinstance(request.auth, ApiKey):
            return None
        # The key hash, not the row id: ids come back after a rollback, hashes do not.
        return f"throttle:api_key:{request.auth.key_hash[:32]}"
