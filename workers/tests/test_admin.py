import socket
import subprocess

import psutil
import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from jobs.tests.factories import chat_request, make_batch
from workers import selectors, services
from workers.models import RegisteredModel, Worker, WorkerCommand
from workers.runtime import heartbeat

from . import factories

HEARTBEAT_URL = "/admin/workers/worker/heartbeat.json"
CHANGELIST_URL = "/admin/workers/worker/"
REMOTE = "gpu-node-7"


STALE_AGE = 25  # seconds, with a 10 s heartbeat
OFFLINE_AGE = 70


@pytest.fixture(autouse=True)
def heartbeat_and_short_wait(settings, monkeypatch):
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "HEARTBEAT_SECONDS": 10}
    # Actions wait two heartbeats for the worker's answer; nothing answers here.
    monkeypatch.setattr("workers.console.admin.command_wait_seconds", lambda: 0.2)


def make_worker(pid=4242, hostname=REMOTE, **fields):
    return factories.make_worker(pid=pid, hostname=hostname, **fields)


def run_action(client, action, *workers):
    response = client.post(
        f"{CHANGELIST_URL}?show=all", {"action": action, "_selected_action": [w.pk for w in workers]}, follow=True
    )
    assert response.status_code == 200
    return [str(m) for m in response.context["messages"]]


@pytest.fixture
def staff(db):
    return get_user_model().objects.create_user(username="bob", password="pw", is_staff=True)


@pytest.fixture
def staff_without_worker_perms(client, staff):
    client.force_login(staff)
    return client


def test_index_shows_the_heartbeat_card_above_the_apps(admin_client):
    page = admin_client.get("/admin/").content.decode()
    assert 'id="heartbeat-card"' in page
    assert f'data-url="{HEARTBEAT_URL}"' in page
    assert page.index("heartbeat-card") < page.index('class="app-workers')


def test_index_has_no_card_for_staff_who_may_not_see_workers(staff_without_worker_perms):
    page = staff_without_worker_perms.get("/admin/").content.decode()
    assert "heartbeat-card" not in page
    assert staff_without_worker_perms.get(HEARTBEAT_URL).status_code == 403


def test_non_staff_are_sent_to_the_login(client, user):
    client.force_login(user)
    for url in ["/admin/", HEARTBEAT_URL, CHANGELIST_URL, "/admin/workers/workercommand/"]:
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/admin/login/")


def test_heartbeat_json_with_no_worker(admin_client):
    report = admin_client.get(HEARTBEAT_URL).json()
    assert report["workers"] == []
    assert report["heartbeat_seconds"] == 10


def test_heartbeat_json_reports_each_recent_worker_with_its_freshness(admin_client, user):
    batch = make_batch(user, [chat_request(f"r{i}") for i in range(4)])
    batch.total_requests, batch.completed_requests, batch.failed_requests = 4, 2, 1
    batch.save()
    make_worker(
        pid=1,
        state=Worker.State.PROCESSING,
        current_model="tiny-llama",
        current_batch=batch,
        memory_kind="gpu",
        memory_used=3 * 2**30,
        memory_total=16 * 2**30,
    )
    make_worker(pid=2, age=STALE_AGE)
    make_worker(pid=3, age=OFFLINE_AGE)
    make_worker(pid=4, state=Worker.State.STOPPED, age=2 * 3600)
    make_worker(pid=5, age=2 * 3600)

    workers = {w["pid"]: w for w in admin_client.get(HEARTBEAT_URL).json()["workers"]}

    assert {pid: w["freshness"] for pid, w in workers.items()} == {1: "online", 2: "stale", 3: "offline", 5: "offline"}
    assert workers[5]["last_seen_text"] == "2 h ago"
    online = workers[1]
    assert online["name"] == f"{REMOTE}:1"
    assert online["state_label"] == "Processing"
    assert online["model"] == "tiny-llama"
    assert online["batch"] == {
        "id": batch.pk,
        "status": "validating",
        "done": 3,
        "total": 4,
        "progress": 0.75,
        "url": f"/admin/jobs/batch/{batch.pk}/change/",
    }
    assert online["last_seen_text"] in ("0 s ago", "1 s ago", "2 s ago")
    assert online["memory"]["text"] == "GPU 3.0\xa0GB / 16.0\xa0GB"
    assert workers[3]["last_seen_text"] == "70 s ago"
    assert workers[2]["batch"] is None


def test_online_workers_are_those_with_a_fresh_beat(db):
    make_worker(pid=1)
    make_worker(pid=2, age=STALE_AGE)
    make_worker(pid=3, state=Worker.State.STOPPED)

    assert [w.pid for w in selectors.worker_list_online()] == [1]


def test_a_local_worker_whose_process_is_gone_is_offline_at_once(admin_client):
    proc = subprocess.Popen(["true"])
    proc.wait()
    make_worker(pid=proc.pid, hostname=socket.gethostname())

    [worker] = admin_client.get(HEARTBEAT_URL).json()["workers"]
    assert worker["freshness"] == "offline"


def test_worker_list_shows_badges_and_filters_by_freshness(admin_client):
    make_worker(pid=1)
    make_worker(pid=2, age=STALE_AGE)
    make_worker(pid=3, state=Worker.State.STOPPED)

    page = admin_client.get(CHANGELIST_URL, {"show": "all"}).content.decode()
    for freshness in ["online", "stale", "offline"]:
        assert f'data-freshness="{freshness}"' in page

    def listed(freshness):
        response = admin_client.get(CHANGELIST_URL, {"freshness": freshness, "show": "all"})
        return sorted(w.pid for w in response.context["cl"].result_list)

    assert listed("online") == [1]
    assert listed("stale") == [2]
    assert listed("offline") == [3]
    stopped = admin_client.get(CHANGELIST_URL, {"state": "stopped", "show": "all"}).context["cl"].result_list
    assert sorted(w.pid for w in stopped) == [3]


def test_worker_detail_is_read_only_and_lists_its_commands(admin_client):
    worker = make_worker()
    services.command_create(worker=worker, action=WorkerCommand.Action.RESTART, requested_by="ops")

    page = admin_client.get(reverse("admin:workers_worker_change", args=[worker.pk])).content.decode()
    assert "recent commands" in page.lower()
    assert "ops" in page
    assert 'name="_save"' not in page
    assert admin_client.get("/admin/workers/worker/add/").status_code == 403


def test_restart_that_no_worker_answers_is_reported_pending(admin_client):
    worker = make_worker()

    [message] = run_action(admin_client, "restart_workers", worker)

    command = WorkerCommand.objects.get()
    assert (command.worker, command.action, command.status) == (worker, "restart", "pending")
    assert command.requested_by == "admin"
    assert message == f"Restart of {worker.name} sent; the worker has not answered yet."


def test_clear_gpu_reports_the_workers_answer(admin_client, monkeypatch):
    worker = make_worker()

    def worker_answers(*, command, timeout):
        heartbeat.clear_gpu(command)  # what the worker's clear-gpu thread does
        command.refresh_from_db()
        return command

    monkeypatch.setattr(services, "command_wait", worker_answers)
    [message] = run_action(admin_client, "clear_gpu", worker)

    assert WorkerCommand.objects.get().status == "done"
    assert message.startswith(f"Clear GPU of {worker.name} done: unloaded nothing; memory")


def test_commands_are_not_sent_to_stopped_workers(admin_client):
    worker = make_worker(state=Worker.State.STOPPED)

    assert run_action(admin_client, "restart_workers", worker) == [f"{worker.name}: not running; nothing sent."]
    assert not WorkerCommand.objects.exists()


def test_kill_of_a_hung_local_worker_falls_back_to_signals(admin_client):
    hung = subprocess.Popen(["sleep", "60"])
    try:
        worker = make_worker(pid=hung.pid, hostname=socket.gethostname(), started_at=timezone.now())

        [message] = run_action(admin_client, "kill_workers", worker)

        hung.wait(timeout=10)
        assert not psutil.pid_exists(hung.pid)
        assert message.startswith(f"Kill of {worker.name}: no answer, so it was killed by signal")
        worker.refresh_from_db()
        assert worker.state == Worker.State.STOPPED
        assert WorkerCommand.objects.get().status == "done"
    finally:
        hung.kill()
        hung.wait()


def test_kill_never_signals_a_process_that_reused_a_dead_workers_pid(admin_client):
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        worker = make_worker(pid=stranger.pid, hostname=socket.gethostname())  # started 5 min before the pid

        [message] = run_action(admin_client, "kill_workers", worker)

        assert stranger.poll() is None, "an unrelated process was killed"
        assert "already gone" in message
    finally:
        stranger.kill()
        stranger.wait()


def test_kill_of_a_silent_remote_worker_says_it_cannot_be_killed_from_here(admin_client):
    worker = make_worker()

    [message] = run_action(admin_client, "kill_workers", worker)

    assert "has not answered yet" in message
    assert f"runs on {REMOTE}" in message
    assert "cannot be killed from here" in message
    assert WorkerCommand.objects.get().status == "pending"


def test_actions_need_the_change_permission(staff_without_worker_perms, staff):
    staff.user_permissions.add(Permission.objects.get(codename="view_worker"))
    worker = make_worker()

    response = staff_without_worker_perms.get(CHANGELIST_URL)
    assert response.status_code == 200
    assert "restart_workers" not in response.content.decode()
    staff_without_worker_perms.post(CHANGELIST_URL, {"action": "restart_workers", "_selected_action": [worker.pk]})
    assert not WorkerCommand.objects.exists()


def test_command_history_is_read_only(admin_client):
    command = services.command_create(worker=make_worker(), action=WorkerCommand.Action.KILL)

    assert "kill" in admin_client.get("/admin/workers/workercommand/").content.decode()
    page = admin_client.get(reverse("admin:workers_workercommand_change", args=[command.pk])).content.decode()
    assert 'name="_save"' not in page
    assert admin_client.get("/admin/workers/workercommand/add/").status_code == 403


def test_model_registry_lists_searches_and_edits_engine_fields(admin_client):
    model = RegisteredModel.objects.create(name="tiny-llama", path="/models/tiny")
    RegisteredModel.objects.create(name="tiny-embed", path="/models/embed", runner="pooling")

    listed = admin_client.get("/admin/workers/registeredmodel/", {"q": "llama"}).context["cl"].result_list
    assert [m.name for m in listed] == ["tiny-llama"]
    assert admin_client.get("/admin/workers/registeredmodel/", {"runner": "pooling"}).status_code == 200

    url = reverse("admin:workers_registeredmodel_change", args=[model.pk])
    form = {
        "name": "tiny-llama",
        "path": "/models/tiny",
        "runner": "generate",
        "is_active": "on",
        "max_model_len": "2048",
        "dtype": "float16",
        "gpu_memory_utilization": "0.5",
        "tensor_parallel_size": "2",
        "extra_engine_args": '{"max_num_seqs": 8}',
    }
    assert admin_client.post(url, form).status_code == 302
    model.refresh_from_db()
    assert model.engine_args()["max_num_seqs"] == 8
    assert (model.max_model_len, model.dtype, model.gpu_memory_utilization) == (2048, "float16", 0.5)

    response = admin_client.post(url, {**form, "gpu_memory_utilization": "1.5"})
    assert response.status_code == 200
    assert response.context["adminform"].form.errors


def test_actions_need_the_operate_permission_not_just_change(staff_without_worker_perms, staff):
    for codename in ("view_worker", "change_worker"):
        staff.user_permissions.add(Permission.objects.get(codename=codename))
    worker = make_worker()

    assert "restart_workers" not in staff_without_worker_perms.get(CHANGELIST_URL).content.decode()
    staff_without_worker_perms.post(CHANGELIST_URL, {"action": "kill_workers", "_selected_action": [worker.pk]})
    assert not WorkerCommand.objects.exists()

    staff.user_permissions.add(Permission.objects.get(codename="operate_worker"))
    staff = get_user_model().objects.get(pk=staff.pk)  # a fresh permission cache
    staff_without_worker_perms.force_login(staff)
    assert "restart_workers" in staff_without_worker_perms.get(CHANGELIST_URL).content.decode()
    messages = run_action(staff_without_worker_perms, "restart_workers", worker)
    assert WorkerCommand.objects.get().action == "restart", messages


@pytest.mark.parametrize(
    "extra", ['{"trust_remote_code": true}', '{"max_num_seqs": 8, "worker_cls": "evil.Worker"}', '["max_num_seqs"]']
)
def test_model_admin_refuses_engine_arguments_outside_the_allow_list(admin_client, extra):
    model = RegisteredModel.objects.create(name="tiny-llama", path="/models/tiny")
    url = reverse("admin:workers_registeredmodel_change", args=[model.pk])
    form = {
        "name": "tiny-llama",
        "path": "/models/tiny",
        "runner": "generate",
        "is_active": "on",
        "dtype": "auto",
        "gpu_memory_utilization": "0.5",
        "tensor_parallel_size": "1",
        "extra_engine_args": extra,
    }
    response = admin_client.post(url, form)
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "extra_engine_args" in errors, errors
    model.refresh_from_db()
    assert model.extra_engine_args == {}
