from django.db import models


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
