"""The register_model command and workers.services.model_register."""

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.db import IntegrityError

from workers.models import RegisteredModel


def test_register_model_stores_the_engine_arguments(db, tmp_path):
    call_command(
        "register_model",
        "my-llama",
        str(tmp_path),
        "--max-model-len",
        "2048",
        "--gpu-memory-utilization",
        "0.5",
        "--engine-args",
        '{"max_num_seqs": 8}',
    )
    model = RegisteredModel.objects.get(name="my-llama")
    assert model.engine_args() == {
        "model": str(tmp_path.resolve()),
        "served_model_name": "my-llama",
        "runner": "generate",
        "dtype": "auto",
        "gpu_memory_utilization": 0.5,
        "tensor_parallel_size": 1,
        "max_model_len": 2048,
        "max_num_seqs": 8,
    }


def test_register_model_again_updates_and_reactivates(db, tmp_path):
    RegisteredModel.objects.create(name="emb", path="/old", is_active=False)
    call_command("register_model", "emb", str(tmp_path), "--runner", "pooling")
    model = RegisteredModel.objects.get(name="emb")
    assert model.path == str(tmp_path.resolve())
    assert model.runner == "pooling"
    assert model.is_active
    assert model.serves_embeddings


def test_register_model_needs_a_local_directory(db, tmp_path):
    with pytest.raises(CommandError):
        call_command("register_model", "x", str(tmp_path / "missing"))
    assert not RegisteredModel.objects.exists()


def test_register_model_refuses_engine_args_that_are_not_json(db, tmp_path):
    with pytest.raises(CommandError):
        call_command("register_model", "x", str(tmp_path), "--engine-args", "{nope")
    assert not RegisteredModel.objects.exists()


def test_register_model_refuses_an_impossible_memory_share(db, tmp_path):
    with pytest.raises((ValidationError, IntegrityError)):
        call_command("register_model", "x", str(tmp_path), "--gpu-memory-utilization", "1.5")
    assert not RegisteredModel.objects.filter(name="x").exists()


def test_register_model_refuses_engine_arguments_outside_the_allow_list(db, tmp_path):
    with pytest.raises(CommandError, match="trust_remote_code"):
        call_command("register_model", "m", str(tmp_path), "--engine-args", '{"trust_remote_code": true}')
    assert not RegisteredModel.objects.exists()


def test_the_allow_list_is_a_setting(db, tmp_path, settings):
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "ENGINE_ARGS_ALLOWED": frozenset({"trust_remote_code"})}
    call_command("register_model", "m", str(tmp_path), "--engine-args", '{"trust_remote_code": true}')
    assert RegisteredModel.objects.get().extra_engine_args == {"trust_remote_code": True}
