"""How many realtime requests one owner has in flight, at most
VLLM_BATCH["MAX_CONCURRENT_REALTIME"] (0: no limit). Counted in Django's cache:
Redis with REDIS_URL, shared by every web process; without it each process
counts its own."""

from django.conf import settings
from django.core.cache import cache

from batchsite.errors import RateLimited

# A process killed with requests in flight leaves its counts behind; they lapse
# after the longest a realtime request may take.
COUNT_TTL_SECONDS = 900


def _key(owner_id):
    return f"realtime:in-flight:{owner_id}"


def acquire(owner_id):
    """Counts one more request of the owner, or raises RateLimited (429) past the limit."""
    limit = settings.VLLM_BATCH["MAX_CONCURRENT_REALTIME"]
    if not limit:
        return False
    key = _key(owner_id)
    cache.add(key, 0, timeout=COUNT_TTL_SECONDS)
    try:
        count = cache.incr(key)
    except ValueError:  # lapsed between add and incr
        cache.add(key, 1, timeout=COUNT_TTL_SECONDS)
        count = 1
    if count > limit:
        release(owner_id)
        raise RateLimited(
            f"Too many realtime requests at once: at most {limit} per user.",
            retry_after=1,
            code="concurrent_requests_limit",
        )
    return True


def release(owner_id):
    try:
        cache.decr(_key(owner_id))
    except ValueError:
        pass
