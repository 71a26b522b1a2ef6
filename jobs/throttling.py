"""Requests per API key (DRF throttling, VLLM_BATCH["THROTTLE_RATE"]). The counts live
in Django's cache: Redis with REDIS_URL, shared by every web process; without it
each web process counts on its own."""

import logging

from django.conf import settings
from redis.exceptions import RedisError
from rest_framework.throttling import SimpleRateThrottle

from .models import ApiKey

logger = logging.getLogger(__name__)


class ApiKeyRateThrottle(SimpleRateThrottle):
    scope = "api_key"

    def get_rate(self):
        return settings.VLLM_BATCH["THROTTLE_RATE"] or None

    def allow_request(self, request, view):
        # Redis not answering in time (seen: a 5 s stall on a loaded host) must not turn
        # every API request into a 500: the request goes through uncounted.
        try:
            return super().allow_request(request, view)
        except (RedisError, OSError):
            logger.warning("Rate limit not checked: the cache did not answer.", exc_info=True)
            return True

    def get_cache_key(self, request, view):
        if not isinstance(request.auth, ApiKey):
            return None
        # The key hash, not the row id: ids come back after a rollback, hashes do not.
        return f"throttle:api_key:{request.auth.key_hash[:32]}"
