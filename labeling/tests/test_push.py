"""A user's finished batch pushed to Label Studio as tasks with predictions, with a
fake Label Studio client and batch outputs written as the runner writes them."""

import json
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.core.management import call_command
from django.core.management.base import CommandError

from jobs import services as jobs_services
from jobs.models import Batch, File
from labeling import bulk, push
from labeling.client import LabelStudioError

from .test_bulk import CHOICES, NER, FakeLabelStudio, error_line, finish, make_project, output_line, task

pytestmark = pytest.mark.django_db


class FakeProject(FakeLabelStudio):
    """The calls a push makes: the project's config, its tasks (with `meta`), imports."""

    def __init__(self, config=CHOICES, tasks=()):
        super().__init__(list(tasks))
        self.config = config
        self.imports = []
        self.fail_import = None

    def project(self, project_id):
        return {"id": project_id, "created_at": "2026-11-30T20:54:01.975287Z", "label_config": self.config}

    def tasks(self, project_id, *, with_predictions=False):
        yield from self.tasks_by_id.values()

    def import_tasks(self, project_id, tasks):
        if self.fail_import:
            raise LabelStudioError(400, self.fail_import)
        tasks = list(tasks)
        self.imports.append(tasks)
        ids = []
        for item in tasks:
            task_id = max(self.tasks_by_id, default=0) + 1
            self.tasks_by_id[task_id] = {"id": task_id, "meta": {}, **item}
            ids.append(task_id)
        return ids

    @property
    def created(self):
        return [t for t in self.tasks_by_id.values() if t.get("meta")]


@pytest.fixture
def owner(db):
    """A team allowed to write to labeling projects (labeling.change_labelingproject)."""
    from django.contrib.auth.models import Permission

    user = get_user_model().objects.create(username="team")
    user.user_permissions.add(Permission.objects.get(codename="change_labelingproject"))
    return user


@pytest.fixture
def tiny(db):
    from workers.models import RegisteredModel

    return RegisteredModel.objects.create(name="tiny-llama", path="/models/tiny-llama")


def chat(custom_id, text, model="tiny-llama"):
    messages = [{"role": "system", "content": "Answer with one word."}, {"role": "user", "content": text}]
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": messages},
    }


def user_batch(owner, lines, metadata=None, endpoint="/v1/chat/completions"):
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    upload = ContentFile(data, name="in.jsonl")
    input_file = jobs_services.file_create(owner=owner, upload=upload, purpose=File.Purpose.BATCH)
    return jobs_services.batch_create(
        owner=owner,
        input_file=input_file,
        endpoint=endpoint,
        metadata={"labelstudio_project": "7"} if metadata is None else metadata,
    )


def completion_line(custom_id, text, logprob=-0.3):
    body = {
        "object": "text_completion",
        "choices": [
            {
                "index": 0,
                "text": text,
                "logprobs": {"tokens": [text], "token_logprobs": [logprob]},
                "finish_reason": "stop",
            }
        ],
    }
    return {"id": f"r-{custom_id}", "custom_id": custom_id, "response": {"status_code": 200, "body": body}}


@pytest.fixture
def project(tiny):
    return make_project(tiny)


def test_request_text_is_the_last_user_message_or_the_prompt():
    assert push.request_text(chat("a", "Great food")["body"]) == "Great food"
    parts = [{"type": "text", "text": "first"}, {"type": "image_url", "image_url": {}}, {"type": "text", "text": "two"}]
    assert push.request_text({"messages": [{"role": "user", "content": parts}]}) == "first\ntwo"
    turns = [
        {"role": "user", "content": "old"},
        {"role": "assistant", "content": "x"},
        {"role": "user", "content": "new"},
    ]
    assert push.request_text({"messages": turns}) == "new"
    assert push.request_text({"prompt": "Once upon"}) == "Once upon"
    assert push.request_text({"prompt": ["one", "two"]}) == "one"
    assert push.request_text({"messages": [{"role": "system", "content": "only system"}]}) is None
    assert push.request_text({"prompt": "  "}) is None
    assert push.request_text(None) is None


def test_output_generation_reads_chat_and_completions_lines():
    text, pairs, error = push.output_generation(output_line("a", "Positive", logprob=-0.2))
    assert (text, error) == ("Positive", None)
    assert "".join(t for t, _ in pairs) == "Positive"
    assert push.output_generation(completion_line("b", "Negative")) == ("Negative", [("Negative", -0.3)], None)
    assert push.output_generation(error_line("c", "prompt too long")) == (None, [], "prompt too long")


def test_push_creates_a_task_per_request_with_a_prediction_only_for_valid_outputs(project, owner):
    lines = [chat("r1", "Great food"), chat("r2", "Terrible service"), chat("r3", "Fine"), chat("r4", "Meh")]
    batch = user_batch(owner, lines + [{"custom_id": "r5", "body": {"model": "tiny-llama", "messages": []}}])
    finish(
        batch,
        [output_line("r1", "Positive"), output_line("r2", "Negative"), output_line("r3", "I think it is fine.")],
        errors=[error_line("r4", "prompt too long"), error_line("r5", "no messages")],
    )
    fake = FakeProject()
    report = push.push_batch(batch=batch, client=fake)
    assert (report.tasks, report.predictions, report.invalid, report.failed, report.no_text) == (4, 2, 1, 1, 1)
    assert report.model_version == f"tiny-llama@{batch.id}"
    created = {t["meta"]["custom_id"]: t for t in fake.created}
    assert list(created) == ["r1", "r2", "r3", "r4"]
    assert created["r2"]["data"] == {"text": "Terrible service"}
    assert created["r2"]["meta"] == {"vllm_batch": batch.id, "custom_id": "r2"}
    [prediction] = created["r2"]["predictions"]
    assert prediction["result"] == [
        {"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": ["Negative"]}}
    ]
    assert prediction["model_version"] == f"tiny-llama@{batch.id}"
    assert 0 < prediction["score"] <= 1
    # Never an invented label: the free-text answer and the failed request have no prediction.
    assert "predictions" not in created["r3"] and "predictions" not in created["r4"]
    assert any("r3: the answer 'I think it is fine.' is not one of the choices" in e for e in report.errors)
    assert any("r4: prompt too long" in e for e in report.errors)
    assert "4 tasks created, 2 with a prediction" in str(report) and "1 invalid outputs" in str(report)


def test_a_second_push_of_the_same_batch_creates_nothing(project, owner):
    batch = finish(user_batch(owner, [chat("a", "x"), chat("b", "y")]), [output_line("a", "Positive")])
    fake = FakeProject(tasks=[task(1, "someone else's task")])
    assert push.push_batch(batch=batch, client=fake).tasks == 2
    again = push.push_batch(batch=batch, client=fake)
    assert (again.tasks, again.already) == (0, 2)
    assert len(fake.imports) == 1 and len(fake.tasks_by_id) == 3


def test_a_push_broken_off_half_way_completes_the_rest(project, owner, monkeypatch):
    monkeypatch.setattr(push, "TASKS_PER_IMPORT", 2)
    batch = finish(user_batch(owner, [chat(f"r{i}", f"text {i}") for i in range(5)]), [])
    fake = FakeProject()
    calls = {"n": 0}
    real_import = fake.import_tasks

    def import_once(project_id, tasks):
        calls["n"] += 1
        if calls["n"] == 2:
            raise LabelStudioError(None, "cannot reach http://ls.test:8080")
        return real_import(project_id, tasks)

    fake.import_tasks = import_once
    with pytest.raises(push.PushError, match="pushing to Label Studio project 7 failed.*cannot reach"):
        push.push_batch(batch=batch, client=fake)
    assert len(fake.created) == 2
    report = push.push_batch(batch=batch, client=fake)
    assert (report.tasks, report.already) == (3, 2)
    assert sorted(t["meta"]["custom_id"] for t in fake.created) == [f"r{i}" for i in range(5)]


def test_ner_answers_become_spans_at_exact_offsets_under_the_named_data_key(tiny, owner):
    config = NER.replace("$text", "$sentence")
    make_project(tiny, config=config)
    text = "Anna met Bob in Paris."
    batch = user_batch(owner, [chat("a", text)], metadata={"labelstudio_project": 7})
    answer = {"label": [{"text": "Paris", "label": "LOC"}, {"text": "Anna", "label": "PER"}]}
    finish(batch, [output_line("a", json.dumps(answer))])
    fake = FakeProject(config=config)
    assert push.push_batch(batch=batch, client=fake).predictions == 1
    [created] = fake.created
    assert created["data"] == {"sentence": text}
    regions = created["predictions"][0]["result"]
    assert sorted((r["value"]["start"], r["value"]["end"], r["value"]["labels"][0]) for r in regions) == [
        (0, 4, "PER"),
        (16, 21, "LOC"),
    ]


def test_completions_batches_are_pushed_too(project, owner):
    line = {"custom_id": "c", "method": "POST", "url": "/v1/completions", "body": {"model": "m", "prompt": "Nice"}}
    batch = finish(user_batch(owner, [line], endpoint="/v1/completions"), [completion_line("c", "Positive")])
    fake = FakeProject()
    assert push.push_batch(batch=batch, client=fake).predictions == 1
    assert fake.created[0]["predictions"][0]["model_version"] == f"m@{batch.id}"


def test_the_data_key_must_be_a_variable_of_the_config(project, owner):
    batch = finish(user_batch(owner, [chat("a", "x")], {"labelstudio_project": "7", "labelstudio_data_key": "t"}), [])
    with pytest.raises(push.PushError, match="labelstudio_data_key 't' is not a variable of the labeling config"):
        push.push_batch(batch=batch, client=FakeProject())
    assert push.push_batch(batch=batch, client=FakeProject(), data_key="text").tasks == 1


def test_batches_that_cannot_be_pushed_are_refused_clearly(project, owner):
    running = user_batch(owner, [chat("a", "x")])
    with pytest.raises(push.PushError, match="still validating"):
        push.push_batch(batch=running, client=FakeProject())
    unnamed = finish(user_batch(owner, [chat("a", "x")], metadata={}), [])
    with pytest.raises(push.PushError, match="names no Label Studio project"):
        push.push_batch(batch=unnamed, client=FakeProject())
    with pytest.raises(push.PushError, match="'seven' is not a Label Studio project id"):
        push.push_batch(batch=unnamed, project="seven", client=FakeProject())
    embeddings = finish(user_batch(owner, [chat("a", "x")], endpoint="/v1/embeddings"), [])
    with pytest.raises(push.PushError, match="only chat and completions"):
        push.push_batch(batch=embeddings, client=FakeProject())
    failed = finish(user_batch(owner, [chat("a", "x")]), [], status=Batch.Status.FAILED)
    with pytest.raises(push.PushError, match="failed before it ran"):
        push.push_batch(batch=failed, client=FakeProject())
    broken = finish(user_batch(owner, [chat("a", "x")]), [])
    with pytest.raises(push.PushError, match="labeling config cannot be used"):
        push.push_batch(batch=broken, client=FakeProject(config="<View><Choices"))


def finish_through_jobs(batch, status="completed"):
    """Ends the batch as the worker does, through jobs (which sends batch_finished)."""
    Batch.objects.filter(pk=batch.pk).update(status="in_progress", total_requests=1)
    jobs_services.batch_finalize(batch_id=batch.pk, final_status=status, holder="test:1")


def test_a_user_batch_naming_a_project_is_pushed_when_it_finishes(
    project, owner, monkeypatch, django_capture_on_commit_callbacks
):
    queued = []
    monkeypatch.setattr("jobs.queueing.enqueue_batch", lambda batch_id: None)
    monkeypatch.setattr("django_q.tasks.async_task", lambda func, *args, **kwargs: queued.append((func, *args)))
    mine = user_batch(owner, [chat("a", "Great")])
    ordinary = user_batch(owner, [chat("a", "x")], metadata={"team": "nlp"})
    unmarked_bulk = user_batch(
        owner, [chat("a", "x")], metadata={"labelstudio_project": "7", "labelstudio_model_version": "v"}
    )
    # Nothing is queued while the batches run.
    assert queued == []
    with django_capture_on_commit_callbacks(execute=True):
        finish_through_jobs(mine)
        finish_through_jobs(ordinary)
        finish_through_jobs(unmarked_bulk, status="cancelled")
        jobs_services.batch_fail(batch_id=mine.pk, code="x", message="already finished: no second signal")
    assert queued == [("labeling.push.push_task", mine.id)]

    fake = FakeProject()
    monkeypatch.setattr(bulk, "label_studio_for", lambda project: fake)
    finish(mine, [output_line("a", "Positive")])
    assert "1 tasks created, 1 with a prediction" in push.push_task(mine.id)
    assert "0 tasks created" in push.push_task(mine.id)
    assert push.push_task("batch_missing") == "batch deleted"


def test_a_batch_whose_owner_may_not_change_labeling_projects_is_not_pushed(
    project, monkeypatch, django_capture_on_commit_callbacks
):
    """Metadata is the API user's own input: naming a project is not enough."""
    queued = []
    monkeypatch.setattr("jobs.queueing.enqueue_batch", lambda batch_id: None)
    monkeypatch.setattr("django_q.tasks.async_task", lambda func, *args, **kwargs: queued.append((func, *args)))
    stranger = get_user_model().objects.create(username="stranger")
    for metadata in (
        {"labelstudio_project": "7"},
        {"labelstudio_project": "7", "labelstudio_model_version": "v", "labelstudio_push": "when_done"},
        {"labelstudio_store": "local", "labelstudio_model_version": "v"},
    ):
        with django_capture_on_commit_callbacks(execute=True):
            finish_through_jobs(user_batch(stranger, [chat("a", "x")], metadata=metadata))
    assert queued == []


def test_push_task_reports_errors(project, owner):
    batch = finish(user_batch(owner, [chat("a", "x")], metadata={"labelstudio_project": "99"}), [])
    assert "No labeling project for Label Studio project 99" in push.push_task(batch.id)


def test_the_batch_admin_has_the_push_action(project, owner, admin_client, monkeypatch):
    monkeypatch.setattr("jobs.queueing.enqueue_batch", lambda batch_id: None)
    fake = FakeProject()
    monkeypatch.setattr(bulk, "label_studio_for", lambda project: fake)
    done = finish(user_batch(owner, [chat("a", "Great"), chat("b", "Bad")]), [output_line("a", "Positive")])
    running = user_batch(owner, [chat("a", "x")])
    # A bulk prediction started without push_when_done is not pushed by the cluster: refused while it runs.
    running_bulk = user_batch(
        owner, [chat("a", "x")], metadata={"labelstudio_project": "7", "labelstudio_model_version": "v"}
    )
    unnamed = finish(user_batch(owner, [chat("a", "x")], metadata={}), [])
    page = admin_client.get("/admin/jobs/batch/")
    assert b"push_batches_action" in page.content
    response = admin_client.post(
        "/admin/jobs/batch/",
        {"action": "push_batches_action", "_selected_action": [done.pk, running.pk, running_bulk.pk, unnamed.pk]},
        follow=True,
    )
    shown = [str(m) for m in response.context["messages"]]
    assert any(f"{done.id} -> Label Studio project 7: 2 tasks created, 1 with a prediction" in m for m in shown)
    assert any(f"{running.id} is validating: pushed when it finishes" in m for m in shown)
    assert any(f"{running_bulk.id} is validating: not finished yet; run it again when it completes" in m for m in shown)
    assert any(f"{unnamed.id}: no labelstudio_project" in m for m in shown)
    assert len(fake.created) == 2


def test_command_push_batch(project, owner, monkeypatch):
    fake = FakeProject()
    monkeypatch.setattr(bulk, "label_studio_for", lambda project: fake)
    batch = finish(user_batch(owner, [chat("a", "Great")], metadata={}), [output_line("a", "Positive")])
    out = StringIO()
    call_command("labelstudio", "push-batch", batch.id, "7", stdout=out)
    assert "1 tasks created, 1 with a prediction" in out.getvalue()
    out = StringIO()
    call_command("labelstudio", "push-batch", batch.id, "7", stdout=out)
    assert "0 tasks created" in out.getvalue() and "1 already pushed" in out.getvalue()
    with pytest.raises(CommandError, match="names no Label Studio project"):
        call_command("labelstudio", "push-batch", batch.id)
    with pytest.raises(CommandError, match="No batch"):
        call_command("labelstudio", "push-batch", "batch_nope", "7")
