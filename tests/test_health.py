"""GET /health and GET /ready: each failing dependency is named, nothing secret is told."""

from unittest import mock

import pytest
from django.db import OperationalError, connection
from django.test import Client, override_settings

from batchsite.test_settings import STORAGES, VLLM_BATCH
from workers.models import Worker
from workers.tests.factories import make_worker

pytestmark = pytest.mark.django_db


@pytest.fixture
def web():
    # Not `client`: tests/conftest.py's is the openai SDK's.
    return Client()


def test_health_needs_nothing(web, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = web.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_ready_with_an_online_worker(web):
    make_worker()
    response = web.get("/ready")
    assert response.status_code == 200, response.json()
    assert response.json() == {
        "status": "ready",
        "checks": {"database": "ok", "storage": "ok", "broker": "ok", "worker": "ok"},
        "failing": [],
    }


def test_ready_without_a_worker(web):
    make_worker(age=3600)  # last seen an hour ago: offline
    make_worker(pid=43, state=Worker.State.STOPPED)
    response = web.get("/ready")
    assert response.status_code == 503
    assert response.json()["failing"] == ["worker"]
    assert response.json()["checks"]["worker"] == "failed: LookupError"


def test_ready_without_a_worker_when_none_is_required(web):
    with override_settings(VLLM_BATCH={**VLLM_BATCH, "READY_REQUIRES_WORKER": False}):
        response = web.get("/ready")
    assert response.status_code == 200
    assert response.json()["checks"]["worker"] == "skipped"


def test_ready_with_the_database_down(web):
    make_worker()
    secret = "password=hunter2 host=db.internal"
    with mock.patch.object(connection, "cursor", side_effect=OperationalError(secret)):
        response = web.get("/ready")
    assert response.status_code == 503
    body = response.json()
    # The ORM broker is the database: it is down too; the worker check needs the database.
    assert body["failing"] == ["broker", "database", "worker"]
    assert body["checks"]["database"] == "failed: OperationalError"
    assert body["checks"]["storage"] == "ok"
    assert "hunter2" not in response.content.decode()


def test_ready_with_read_only_storage(web, tmp_path):
    make_worker()
    # A directory under a regular file can be neither made nor written, even by root.
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    storages = {**STORAGES, "default": {**STORAGES["default"], "OPTIONS": {"location": str(blocker / "files")}}}
    with override_settings(STORAGES=storages):
        response = web.get("/ready")
    assert response.status_code == 503
    assert response.json()["failing"] == ["storage"]
    assert str(tmp_path) not in response.content.decode()


def test_ready_with_redis_unreachable(web):
    make_worker()

    class DeadRedis:
        def ping(self):
            raise ConnectionError("Error 111 connecting to redis://:secret@10.0.0.5:6379")

    with (
        override_settings(Q_CLUSTER={"name": "t", "redis": "redis://:secret@10.0.0.5:6379"}),
        mock.patch("django_q.brokers.get_broker", return_value=DeadRedis()),
    ):
        response = web.get("/ready")
    assert response.status_code == 503
    assert response.json()["failing"] == ["broker"]
    assert "secret" not in response.content.decode()


def test_health_and_ready_are_get_only(web):
    assert web.post("/health").status_code == 405
    assert web.post("/ready").status_code == 405
