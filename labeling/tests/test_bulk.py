"""Bulk predictions through a batch, with a fake Label Studio client and fake batch outputs."""

import json
from io import StringIO

import pytest
from django.core.files.base import ContentFile
from django.core.management import call_command
from django.core.management.base import CommandError

from jobs import services as jobs_services
from jobs.models import Batch, BatchResult, File
from labeling import bulk
from labeling.client import LabelStudioError
from labeling.models import LabelingProject
from workers.models import RegisteredModel

from .fakes import tokens

pytestmark = pytest.mark.django_db

CHOICES = """<View>
  <Text name="text" value="$text"/>
  <Choices name="sentiment" toName="text"><Choice value="Positive"/><Choice value="Negative"/></Choices>
</View>"""
NER = """<View>
  <Labels name="label" toName="text"><Label value="PER"/><Label value="LOC"/></Labels>
  <Text name="text" value="$text"/>
</View>"""


class FakeLabelStudio:
    """The calls bulk makes, over an in-memory project."""

    def __init__(self, tasks, fail_store=None):
        self.tasks_by_id = {t["id"]: t for t in tasks}
        self.stored = []
        self.fail_store = fail_store
        self.closed = False

    def tasks(self, project_id, *, with_predictions=False):
        assert with_predictions
        yield from self.tasks_by_id.values()

    def create_predictions(self, project_id, items):
        if self.fail_store:
            raise LabelStudioError(400, self.fail_store)
        self.stored.extend(items)
        for item in items:
            self.tasks_by_id[item["task"]].setdefault("predictions", []).append(item)
        return len(items)

    def project(self, project_id):
        return {"id": project_id, "created_at": "2026-11-30T20:54:01.975287Z", "label_config": CHOICES}

    def close(self):
        self.closed = True


def task(task_id, text, predictions=()):
    return {"id": task_id, "data": {"text": text}, "predictions": list(predictions), "annotations": []}


@pytest.fixture
def tiny(db):
    return RegisteredModel.objects.create(name="tiny-llama", path="/models/tiny-llama")


def make_project(model, config=CHOICES, key="7.1795811871", **fields):
    defaults = {
        "ls_project": key,
        "ls_project_id": int(key.split(".")[0]),
        "label_config": config,
        "model": model,
        "ls_hostname": "http://ls.test:8080",
        "ls_access_token": "from-setup",
    }
    return LabelingProject.objects.create(**{**defaults, **fields})


def batch_lines(batch):
    with jobs_services.file_open(batch.input_file) as handle:
        return [json.loads(line) for line in handle]


def output_line(custom_id, text, logprob=-0.2):
    content = [{"token": t, "logprob": lp, "bytes": None, "top_logprobs": []} for t, lp in tokens(text, logprob)]
    body = {
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": {"content": content},
                "finish_reason": "stop",
            }
        ],
    }
    return {
        "id": f"r-{custom_id}",
        "custom_id": custom_id,
        "response": {"status_code": 200, "body": body},
        "error": None,
    }


def error_line(custom_id, message="prompt too long"):
    body = {"error": {"message": message, "type": "invalid_request_error", "code": "invalid_request"}}
    return {
        "id": f"r-{custom_id}",
        "custom_id": custom_id,
        "response": {"status_code": 400, "body": body},
        "error": None,
    }


def finish(batch, outputs, errors=(), status=Batch.Status.COMPLETED):
    """What the runner leaves behind: output and error files and a final status."""

    def stored(lines, purpose):
        if not lines:
            return None
        data = "".join(json.dumps(line) + "\n" for line in lines).encode()
        return jobs_services.file_create(owner=batch.owner, upload=ContentFile(data, name="out.jsonl"), purpose=purpose)

    batch.output_file = stored(outputs, File.Purpose.BATCH_OUTPUT)
    batch.error_file = stored(list(errors), File.Purpose.BATCH_ERROR)
    batch.status = status
    batch.save()
    return batch


def test_predict_start_writes_one_guided_request_per_task(tiny):
    project = make_project(tiny)
    fake = FakeLabelStudio([task(1, "Great food"), task(2, "Terrible service"), task(3, "Fine")])
    started = bulk.predict_start(project=project, client=fake)
    batch = started.batch
    assert (started.tasks, started.requests, started.already_predicted, started.no_text) == (3, 3, 0, 0)
    assert batch.endpoint == "/v1/chat/completions"
    assert batch.owner.username == "labelstudio" and not batch.owner.is_active
    assert batch.metadata == {"labelstudio_project": "7.1795811871", "labelstudio_model_version": project.model_version}
    lines = batch_lines(batch)
    assert [line["custom_id"] for line in lines] == ["task-1", "task-2", "task-3"]
    for line in lines:
        assert line["method"] == "POST" and line["url"] == "/v1/chat/completions"
        assert line["body"]["model"] == "tiny-llama"
        assert line["body"]["guided_choice"] == ["Positive", "Negative"]
        assert line["body"]["logprobs"] is True
    assert "Terrible service" in lines[1]["body"]["messages"][-1]["content"]
    assert not fake.closed  # a client given by the caller stays open


def test_predict_start_skips_predicted_tasks_and_tasks_without_text(tiny):
    project = make_project(tiny)
    done = {"model_version": project.model_version, "result": []}
    other = {"model_version": "older@1234", "result": []}
    tasks = [task(1, "a", [done]), task(2, "b", [other]), {"id": 3, "data": {"title": "no text"}}, task(4, "d")]
    started = bulk.predict_start(project=project, client=FakeLabelStudio(tasks))
    assert (started.tasks, started.requests, started.already_predicted, started.no_text) == (4, 2, 1, 1)
    assert [line["custom_id"] for line in batch_lines(started.batch)] == ["task-2", "task-4"]
    redo = bulk.predict_start(project=project, client=FakeLabelStudio(tasks), redo=True)
    assert redo.requests == 3


def test_predict_start_with_nothing_to_ask_starts_no_batch(tiny):
    project = make_project(tiny)
    started = bulk.predict_start(project=project, client=FakeLabelStudio([]))
    assert started.batch is None
    assert not Batch.objects.exists()
    assert "Nothing to predict" in bulk.describe(started)


def test_predict_start_needs_a_model_and_a_usable_config(tiny):
    with pytest.raises(bulk.BulkError, match="no active model"):
        bulk.predict_start(project=make_project(None), client=FakeLabelStudio([task(1, "a")]))
    broken = make_project(tiny, key="8.1", config="<View><Choices")
    with pytest.raises(bulk.BulkError, match="labeling config"):
        bulk.predict_start(project=broken, client=FakeLabelStudio([task(1, "a")]))


def test_predict_start_reports_an_unreachable_label_studio(tiny, monkeypatch):
    class Down(FakeLabelStudio):
        def tasks(self, project_id, *, with_predictions=False):
            raise LabelStudioError(None, "cannot reach http://ls.test:8080")

    with pytest.raises(bulk.BulkError, match="cannot read its tasks.*cannot reach"):
        bulk.predict_start(project=make_project(tiny), client=Down([]))


def test_push_stores_valid_predictions_for_every_answered_task(tiny):
    project = make_project(tiny)
    fake = FakeLabelStudio([task(1, "Great food"), task(2, "Terrible service")])
    batch = bulk.predict_start(project=project, client=fake).batch
    finish(batch, [output_line("task-1", "Positive"), output_line("task-2", "Negative")])
    report = bulk.predict_push(batch=batch, client=fake)
    assert (report.stored, report.failed, report.already_predicted, report.gone) == (2, 0, 0, 0)
    by_task = {item["task"]: item for item in fake.stored}
    assert by_task[2]["result"] == [
        {"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": ["Negative"]}}
    ]
    assert by_task[1]["model_version"] == project.model_version
    assert 0 < by_task[1]["score"] <= 1


def test_push_places_ner_spans_at_exact_offsets(tiny):
    project = make_project(tiny, config=NER)
    text = "Anna met Anna in Paris."
    fake = FakeLabelStudio([task(5, text)])
    batch = bulk.predict_start(project=project, client=fake).batch
    answer = {
        "label": [{"text": "Anna", "label": "PER"}, {"text": "Anna", "label": "PER"}, {"text": "Paris", "label": "LOC"}]
    }
    finish(batch, [output_line("task-5", json.dumps(answer))])
    assert bulk.predict_push(batch=batch, client=fake).stored == 1
    regions = fake.stored[0]["result"]
    assert [(r["value"]["start"], r["value"]["end"], r["value"]["labels"]) for r in regions] == [
        (0, 4, ["PER"]),
        (9, 13, ["PER"]),
        (17, 22, ["LOC"]),
    ]
    assert all(text[r["value"]["start"] : r["value"]["end"]] == r["value"]["text"] for r in regions)


def test_push_leaves_out_failed_and_invalid_answers_and_deleted_tasks(tiny):
    project = make_project(tiny)
    fake = FakeLabelStudio([task(1, "a"), task(2, "b"), task(3, "c"), task(4, "d")])
    batch = bulk.predict_start(project=project, client=fake).batch
    del fake.tasks_by_id[4]
    finish(
        batch,
        [output_line("task-1", "Positive"), output_line("task-2", "Maybe"), output_line("task-4", "Negative")],
        errors=[error_line("task-3")],
    )
    report = bulk.predict_push(batch=batch, client=fake)
    assert (report.stored, report.failed, report.gone) == (1, 2, 1)
    assert [item["task"] for item in fake.stored] == [1]
    assert any("not one of the choices" in e for e in report.errors)
    assert any("prompt too long" in e for e in report.errors)


def test_push_twice_stores_each_prediction_once(tiny):
    project = make_project(tiny)
    fake = FakeLabelStudio([task(1, "a"), task(2, "b")])
    batch = bulk.predict_start(project=project, client=fake).batch
    finish(batch, [output_line("task-1", "Positive"), output_line("task-2", "Negative")])
    assert bulk.predict_push(batch=batch, client=fake).stored == 2
    again = bulk.predict_push(batch=batch, client=fake)
    assert (again.stored, again.already_predicted) == (0, 2)
    assert len(fake.stored) == 2


def test_push_of_a_running_or_foreign_batch_is_refused(tiny):
    project = make_project(tiny)
    fake = FakeLabelStudio([task(1, "a")])
    batch = bulk.predict_start(project=project, client=fake).batch
    with pytest.raises(bulk.BulkError, match="still validating"):
        bulk.predict_push(batch=batch, client=fake)
    batch.metadata = {"team": "x"}
    batch.save()
    with pytest.raises(bulk.BulkError, match="not a Label Studio bulk prediction"):
        bulk.predict_push(batch=batch, client=fake)


def test_push_reports_label_studio_refusing_the_predictions(tiny):
    project = make_project(tiny)
    fake = FakeLabelStudio([task(1, "a")])
    batch = finish(bulk.predict_start(project=project, client=fake).batch, [output_line("task-1", "Positive")])
    fake.fail_store = "Validation error: Prediction 0: bad"
    with pytest.raises(bulk.BulkError, match="storing predictions in Label Studio failed.*Prediction 0"):
        bulk.predict_push(batch=batch, client=fake)


def test_label_studio_comes_from_setup_unless_settings_override(tiny, settings):
    project = make_project(tiny)
    settings.LABEL_STUDIO_URL, settings.LABEL_STUDIO_API_KEY = "", ""
    client = bulk.label_studio_for(project)
    assert client.url == "http://ls.test:8080"
    assert client.http.headers["Authorization"] == "Token from-setup"
    settings.LABEL_STUDIO_URL, settings.LABEL_STUDIO_API_KEY = "http://other:9000/", "from-settings"
    client = bulk.label_studio_for(project)
    assert (client.url, client.http.headers["Authorization"]) == ("http://other:9000", "Token from-settings")
    settings.LABEL_STUDIO_URL, settings.LABEL_STUDIO_API_KEY = "", ""
    project.ls_access_token = ""
    with pytest.raises(bulk.BulkError, match="no Label Studio URL and API token"):
        bulk.label_studio_for(project)


def test_find_project_by_id_or_key(tiny, settings):
    settings.LABEL_STUDIO_URL, settings.LABEL_STUDIO_API_KEY = "", ""
    first = make_project(tiny, key="7.100")
    assert bulk.find_project("7") == first
    assert bulk.find_project("7.100") == first
    make_project(tiny, key="7.200")
    with pytest.raises(bulk.BulkError, match="Several Label Studio projects have id 7"):
        bulk.find_project("7")
    assert bulk.find_project("7.100") == first
    with pytest.raises(bulk.BulkError, match="No labeling project for Label Studio project 9"):
        bulk.find_project("9")
    with pytest.raises(Exception, match="must look like"):
        bulk.find_project("nine")


def test_find_project_creates_an_unknown_project_from_label_studio(tiny):
    project = bulk.find_project("12", client=FakeLabelStudio([]))
    assert project.ls_project_id == 12
    assert project.ls_project.startswith("12.")
    assert project.label_config == CHOICES
    assert project.model == tiny


def test_wait_finished_is_bounded(tiny, monkeypatch):
    monkeypatch.setattr(bulk, "WAIT_INTERVAL", 0.01)
    batch = bulk.predict_start(project=make_project(tiny), client=FakeLabelStudio([task(1, "a")])).batch
    with pytest.raises(bulk.BulkError, match="still validating.*labelstudio push"):
        bulk.wait_finished(batch, timeout=0.05)
    finish(batch, [])
    assert bulk.wait_finished(batch, timeout=0.05).status == "completed"


def test_push_task_stores_a_finished_batch_once(tiny, monkeypatch):
    project = make_project(tiny)
    fake = FakeLabelStudio([task(1, "a")])
    monkeypatch.setattr(bulk, "label_studio_for", lambda project: fake)
    batch = bulk.predict_start(project=project, client=fake, push_when_done=True).batch
    # Queued only once the batch has finished; a running one is refused, not waited for.
    assert "still validating" in bulk.push_task(batch.id)
    finish(batch, [output_line("task-1", "Positive")])
    assert "1 predictions stored" in bulk.push_task(batch.id)
    assert fake.stored[0]["task"] == 1
    assert "0 predictions stored" in bulk.push_task(batch.id)
    assert bulk.push_task("batch_missing") == "batch deleted"


def test_start_with_push_when_done_marks_the_batch(tiny):
    project = make_project(tiny)
    marked = bulk.predict_start(project=project, client=FakeLabelStudio([task(1, "a")]), push_when_done=True).batch
    plain = bulk.predict_start(project=project, client=FakeLabelStudio([task(1, "a")])).batch
    assert marked.metadata == {
        "labelstudio_project": project.ls_project,
        "labelstudio_model_version": project.model_version,
        "labelstudio_push": "when_done",
    }
    assert "labelstudio_push" not in plain.metadata
    assert bulk.pushes_when_done(marked) and not bulk.pushes_when_done(plain)


def test_command_predict_and_push(tiny, monkeypatch):
    project = make_project(tiny)
    fake = FakeLabelStudio([task(1, "Great"), task(2, "Bad")])
    monkeypatch.setattr(bulk, "label_studio_for", lambda project: fake)
    out = StringIO()
    call_command("labelstudio", "predict", "7", stdout=out)
    batch = Batch.objects.get()
    assert f"Batch {batch.id}: 2 of 2 tasks" in out.getvalue()
    assert batch.metadata["labelstudio_project"] == project.ls_project
    assert bulk.pushes_when_done(batch)
    finish(batch, [output_line("task-1", "Positive"), output_line("task-2", "Negative")])
    out = StringIO()
    call_command("labelstudio", "push", batch.id, stdout=out)
    assert "2 predictions stored in Label Studio" in out.getvalue()
    with pytest.raises(CommandError, match="No batch"):
        call_command("labelstudio", "push", "batch_nope")
    with pytest.raises(CommandError, match="No labeling project"):
        call_command("labelstudio", "predict", "99")
    with pytest.raises(CommandError, match="No user"):
        call_command("labelstudio", "predict", "7", "--owner", "nobody")


def test_admin_action_starts_a_batch_per_project_owned_by_the_admin(
    tiny, admin_client, admin_user, monkeypatch, django_capture_on_commit_callbacks
):
    pushed = []
    monkeypatch.setattr("jobs.queueing.enqueue_batch", lambda batch_id: None)
    fake = FakeLabelStudio([task(1, "Great"), task(2, "Bad")])
    monkeypatch.setattr(bulk, "label_studio_for", lambda project: fake)
    project = make_project(tiny)
    no_model = make_project(None, key="8.1")
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            "/admin/labeling/labelingproject/",
            {"action": "retrieve_predictions_action", "_selected_action": [project.pk, no_model.pk]},
            follow=True,
        )
    shown = [str(m) for m in response.context["messages"]]
    batch = Batch.objects.get()
    assert batch.owner == admin_user
    assert any(
        f"Batch {batch.id}: 2 of 2 tasks" in m and "stored in Label Studio when it completes" in m for m in shown
    )
    assert any("no active model" in m for m in shown)
    assert bulk.pushes_when_done(batch)

    # When the batch finishes, jobs' batch_finished queues the push, which stores the predictions.
    monkeypatch.setattr("django_q.tasks.async_task", lambda func, *args, **kwargs: pushed.append((func, *args)))
    BatchResult.objects.create(
        batch=batch, line=1, custom_id="task-1", is_error=False, text=json.dumps(output_line("task-1", "Positive"))
    )
    Batch.objects.filter(pk=batch.pk).update(status="in_progress", total_requests=2)
    with django_capture_on_commit_callbacks(execute=True):
        jobs_services.batch_finalize(batch_id=batch.pk, final_status="completed", holder="test:1")
    assert pushed == [("labeling.bulk.push_task", batch.id)]
    assert "1 predictions stored" in bulk.push_task(batch.id)
    assert [item["task"] for item in fake.stored] == [1]


def test_a_bulk_batch_not_started_to_push_is_not_pushed_when_it_finishes(
    tiny, monkeypatch, django_capture_on_commit_callbacks
):
    queued = []
    monkeypatch.setattr("django_q.tasks.async_task", lambda func, *args, **kwargs: queued.append(func))
    batch = bulk.predict_start(project=make_project(tiny), client=FakeLabelStudio([task(1, "a")])).batch
    with django_capture_on_commit_callbacks(execute=True):
        jobs_services.batch_fail(batch_id=batch.pk, code="x", message="y")
    assert queued == []
