"""Which vllm.LLM arguments a registered model may add: the allow-list in
VLLM_BATCH["ENGINE_ARGS_ALLOWED"], so a staff user cannot turn on
trust_remote_code or make vLLM import code from elsewhere. The worker checks
the same list again when it loads the model (workers.engine.host)."""

from django.conf import settings


def refused_engine_args(extra):
    """The problem with `extra` (a model's extra_engine_args) as a sentence, or None."""
    if extra in (None, ""):
        return None
    if not isinstance(extra, dict):
        return "Engine arguments must be a JSON object."
    allowed = settings.VLLM_BATCH["ENGINE_ARGS_ALLOWED"]
    refused = sorted(name for name in extra if name not in allowed)
    if not refused:
        return None
    return (
        f"Not allowed: {', '.join(refused)}. Allowed engine arguments: {', '.join(sorted(allowed))} "
        "(VLLM_BATCH_ENGINE_ARGS_ALLOWED)."
    )
