"""Upgrades keep the results of batches that are still running."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("jobs", "0001_initial")]
AFTER = [("jobs", "0002_batchresult_text")]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


@pytest.fixture(autouse=True)
def back_to_the_latest_schema():
    """Tests after this one need every migration applied again."""
    yield
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())


@pytest.mark.django_db(transaction=True)
def test_saved_results_become_their_output_lines():
    old = migrate(BEFORE)
    User = old.get_model("auth", "User")
    File = old.get_model("jobs", "File")
    Batch = old.get_model("jobs", "Batch")
    BatchResult = old.get_model("jobs", "BatchResult")
    owner = User.objects.create(username="upgrader")
    file = File.objects.create(id="file-upgrade", owner=owner, purpose="batch", filename="in.jsonl", bytes=1)
    batch = Batch.objects.create(
        id="batch_upgrade",
        owner=owner,
        input_file=file,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        expires_at="2030-01-01T00:00:00Z",
    )
    response = {"status_code": 200, "t": "a\u2028b"}
    payload = {"id": "batch_req_1", "custom_id": "ä-1", "response": response, "error": None}
    BatchResult.objects.create(batch=batch, line=1, custom_id="ä-1", payload=payload)

    new = migrate(AFTER)
    row = new.get_model("jobs", "BatchResult").objects.get(batch_id="batch_upgrade")
    assert row.text == (
        '{"id": "batch_req_1", "custom_id": "ä-1", "response": {"status_code": 200, "t": "a\\u2028b"}, "error": null}'
    )
