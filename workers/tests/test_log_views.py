import logging

import pytest

from workers.console import logs

PAGE = "/admin/worker-logs"
CONTENT = "/admin/worker-logs/content"
DOWNLOAD = "/admin/worker-logs/download"


def record(level, message):
    return f"2025-01-31 12:00:00,123 {level} [42] [-] workers.runner: {message}"


@pytest.fixture
def log_dir(settings, tmp_path):
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "LOG_DIR": tmp_path}
    return tmp_path


@pytest.fixture
def worker_log(log_dir):
    path = log_dir / "worker.log"
    path.write_text(
        "\n".join(
            [
                record("INFO", "Process-1 ready for work at 100"),
                record("WARNING", "freed the lease of dead worker"),
                record("ERROR", "lease heartbeat failed for batch_1"),
                "Traceback (most recent call last):",
                record("INFO", "batch batch_1 completed"),
            ]
        )
        + "\n"
    )
    return path


@pytest.fixture
def non_staff_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_user("bob", password="pw"))
    return client


@pytest.mark.django_db
@pytest.mark.parametrize("url", [PAGE, CONTENT, DOWNLOAD])
def test_anonymous_users_are_sent_to_the_admin_login(client, url, worker_log):
    response = client.get(url)

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/?next=")


@pytest.mark.parametrize("url", [PAGE, CONTENT, DOWNLOAD])
def test_non_staff_users_are_sent_to_the_admin_login(non_staff_client, url, worker_log):
    response = non_staff_client.get(url)

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_staff_see_the_viewer_inside_the_admin(admin_client, worker_log):
    response = admin_client.get(PAGE)

    assert response.status_code == 200
    page = response.content.decode()
    assert 'id="site-name"' in page
    assert 'data-content-url="/admin/worker-logs/content"' in page
    assert '<option value="web">web.log</option>' in page
    # The log itself is fetched as data, never rendered into the page.
    assert "ready for work" not in page


def test_content_is_the_tail_with_levels_and_counts(admin_client, worker_log):
    response = admin_client.get(CONTENT, {"tail": 3, "log": "worker"})

    assert response.status_code == 200
    assert response.json() == {
        "lines": [
            record("ERROR", "lease heartbeat failed for batch_1"),
            "Traceback (most recent call last):",
            record("INFO", "batch batch_1 completed"),
        ],
        "levels": ["ERROR", "ERROR", "INFO"],
        "errors": 1,
        "warnings": 0,
        "file": "worker.log",
        "size": worker_log.stat().st_size,
    }


def test_content_of_a_log_not_written_yet_is_empty(admin_client, log_dir):
    response = admin_client.get(CONTENT, {"log": "web"})

    assert response.status_code == 200
    assert response.json() | {"levels": None} == {
        "lines": [],
        "levels": None,
        "errors": 0,
        "warnings": 0,
        "file": "web.log",
        "size": 0,
    }


@pytest.mark.parametrize("tail", ["1", "10000"])
def test_tail_accepts_the_bounds(admin_client, worker_log, tail):
    assert admin_client.get(CONTENT, {"tail": tail}).status_code == 200


@pytest.mark.parametrize("tail", ["0", "-5", "10001", "abc", "", "1.5", "9" * 5000])
def test_tail_outside_the_bounds_is_a_400(admin_client, worker_log, tail):
    response = admin_client.get(CONTENT, {"tail": tail})

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "tail"


@pytest.mark.parametrize("url", [CONTENT, DOWNLOAD])
@pytest.mark.parametrize("name", ["jobs", "../secret_key", "/etc/passwd", "worker.log"])
def test_unknown_log_names_are_a_400(admin_client, worker_log, url, name):
    response = admin_client.get(url, {"log": name})

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "log"


def test_download_streams_the_whole_log_as_an_attachment(admin_client, worker_log):
    response = admin_client.get(DOWNLOAD, {"log": "worker"})

    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Disposition"] == 'attachment; filename="worker.log"'
    assert response["Content-Length"] == str(worker_log.stat().st_size)
    assert b"".join(response.streaming_content) == worker_log.read_bytes()


def test_download_sends_the_size_the_log_had_when_it_started(admin_client, worker_log):
    before = worker_log.read_bytes()
    response = admin_client.get(DOWNLOAD)
    with open(worker_log, "a") as f:
        f.write(record("INFO", "written during the download") + "\n")

    assert b"".join(response.streaming_content) == before


def test_download_of_a_log_not_written_yet_is_a_404(admin_client, log_dir):
    assert admin_client.get(DOWNLOAD, {"log": "web"}).status_code == 404


def test_the_viewer_still_shows_the_tail_after_the_real_handler_rolls_over(admin_client, settings, log_dir):
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "LOG_MAX_BYTES": 2000, "LOG_BACKUPS": 2}
    handler = logs.file_handler("worker")
    handler.addFilter(logs.BatchIdFilter())
    handler.setFormatter(logging.Formatter(settings.LOGGING["formatters"]["line"]["format"]))
    logger = logging.getLogger("workers.tests.rollover")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for i in range(200):
            logger.warning("message %03d", i)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
        handler.close()

    current = (log_dir / "worker.log").read_text().splitlines()
    assert (log_dir / "worker.log.1").exists()
    assert (log_dir / "worker.log.2").exists()
    assert not (log_dir / "worker.log.3").exists()
    assert (log_dir / "worker.log").stat().st_size < 2200

    wanted = len(current) + 5
    body = admin_client.get(CONTENT, {"tail": wanted}).json()
    assert [line.rsplit(" ", 1)[1] for line in body["lines"]] == [f"{i:03d}" for i in range(200 - wanted, 200)]
    assert body["warnings"] == wanted


@pytest.mark.parametrize("url", [PAGE, CONTENT, DOWNLOAD])
def test_staff_without_the_logs_permission_are_refused(client, django_user_model, url, worker_log):
    from django.contrib.auth.models import Permission

    staff = django_user_model.objects.create_user("carol", password="pw", is_staff=True)
    client.force_login(staff)
    assert client.get(url).status_code == 403

    staff.user_permissions.add(Permission.objects.get(codename="view_logs"))
    client.force_login(django_user_model.objects.get(pk=staff.pk))
    assert client.get(url).status_code == 200
