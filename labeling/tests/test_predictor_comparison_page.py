"""The accuracy page's "Compare predictors" panel: the django-q task stores the
learning curve (or its error) on the project, the page draws it as a table and an
SVG line chart, and the button queues the task for those who may change projects."""

import re

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse

from labeling import comparison
from labeling import examples as E
from labeling.models import LabelingProject
from workers.models import RegisteredModel

from .fakes import FakeChat
from .test_fewshot import CHOICES, MULTI, FakeEmbed, add_ground_truth

pytestmark = pytest.mark.django_db

WORDS = {
    "Positive": ["good movie", "great food"],
    "Negative": ["bad service", "awful movie"],
    "Neutral": ["the weather"],
}
# 24 ground-truth tasks: 6 held out, sizes 5 and 10 fit the other 18.
LABELS = {f"t{i:02d}": ["Positive", "Negative", "Neutral"][i % 3] for i in range(24)}


class ExamplesHelpChat(FakeChat):
    """Right when the prompt holds examples (few-shot), "Neutral" without (zero-shot)."""

    def _answer(self, request):
        if len(request["messages"]) == 1:
            return "Neutral"
        return super()._answer(request)


@pytest.fixture
def project(db):
    tiny = RegisteredModel.objects.create(name="tiny-llama", path="/models/tiny-llama")
    project = LabelingProject.objects.create(
        ls_project="31.1", ls_project_id=31, title="Reviews", label_config=CHOICES, model=tiny, few_shot_k=2
    )
    for i, (key, label) in enumerate(LABELS.items()):
        add_ground_truth(project, i + 1, f"{WORDS[label][i % len(WORDS[label])]} {key}", label)
    E._cache.clear()
    return project


@pytest.fixture
def fakes(monkeypatch):
    chat = ExamplesHelpChat(answers=LABELS)
    monkeypatch.setattr("workers.inference.chat", chat)
    monkeypatch.setattr("workers.inference.embed", FakeEmbed())
    return chat


@pytest.fixture
def staff(client):
    client.force_login(User.objects.create_superuser("admin", "a@example.com", "pw"))
    return client


def page(project):
    return reverse("admin:labeling_labelingproject_accuracy", args=[project.pk])


def test_the_task_stores_the_learning_curve_with_the_methods_and_sizes_that_fit(project, fakes):
    comparison.compare_task(project.pk)
    state = LabelingProject.objects.get(pk=project.pk).predictor_comparison
    assert state["status"] == "done" and state["finished_at"] and state["notes"] == {}
    report = state["report"]
    assert report["methods"] == ["zero_shot", "few_shot", "embedding"]
    assert (report["ground_truth"], report["held_out"], report["pool"]) == (24, 6, 18)
    assert [p["size"] for p in report["curve"]] == [5, 10] and report["skipped_sizes"] == []
    held_out_neutral = report["zero_shot"]["controls"]["sentiment"]["confusion_matrix"]["matrix"][2][2]
    assert report["zero_shot"]["accuracy"] == pytest.approx(held_out_neutral / 6)
    assert [p["few_shot"]["accuracy"] for p in report["curve"]] == [1.0, 1.0]
    assert all(0 <= p["embedding"]["accuracy"] <= 1 for p in report["curve"])
    # Zero-shot once, few-shot once per size; never a held-out task as its own example.
    assert len(fakes.calls) == 3 and all(len(c["requests"]) == 6 for c in fakes.calls)


def test_without_a_model_only_the_embedding_predictor_is_compared_and_the_page_says_why(staff, project, fakes):
    LabelingProject.objects.filter(pk=project.pk).update(model=None)
    comparison.compare_task(project.pk)
    state = LabelingProject.objects.get(pk=project.pk).predictor_comparison
    assert state["status"] == "done" and state["report"]["methods"] == ["embedding"]
    assert fakes.calls == []
    html = staff.get(page(project)).content.decode()
    assert re.findall(r'data-method="(\w+)"', html) == ["embedding"]
    assert "Zero-shot LLM: not compared (the project has no active LLM model)" in html


def test_the_page_draws_the_stored_report_as_a_table_and_lines(staff, project, fakes):
    comparison.compare_task(project.pk)
    report = LabelingProject.objects.get(pk=project.pk).predictor_comparison["report"]
    response = staff.get(page(project))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="acc-predictors-table"' in html and "Accuracy on the 6 held-out tasks" in html
    assert 'id="acc-predictors-held-out">6<' in html and "Computed at" in html
    table = html[
        html.index('id="acc-predictors-table"') : html.index("</table>", html.index('id="acc-predictors-table"'))
    ]
    zero = f"{report['zero_shot']['accuracy'] * 100:.1f} %"
    assert "<th>Zero-shot LLM</th><th>Few-shot LLM</th><th>Embedding predictor</th>" in table
    assert f"<tr><td>5</td><td>{zero}</td><td>100.0 %</td>" in table
    assert f"<tr><td>10</td><td>{zero}</td><td>100.0 %</td>" in table
    lines = dict(re.findall(r'data-method="(\w+)" points="([^"]*)"', html))
    assert set(lines) == {"zero_shot", "few_shot", "embedding"}
    # Few-shot is right everywhere: both points at the top (y of 100 %), at the left and right ends.
    assert lines["few_shot"] == "48.0,12.0 468.0,12.0"
    flat = lines["zero_shot"].split()
    assert len(flat) == 2 and flat[0].split(",")[1] == flat[1].split(",")[1]
    assert len(lines["embedding"].split()) == 2
    assert html.count("<circle ") == 4  # the dots of few-shot and embedding


def test_the_button_queues_the_task_and_the_page_says_queued(staff, project, monkeypatch):
    queued = []
    monkeypatch.setattr("django_q.tasks.async_task", lambda func, *args, **kwargs: queued.append((func, *args)))
    html = staff.get(page(project)).content.decode()
    assert 'id="acc-compare-predictors"' in html and 'id="acc-predictors-none"' in html
    response = staff.post(page(project), {"action": "compare-predictors"}, follow=True)
    assert queued == [("labeling.comparison.compare_task", project.pk, {})]
    html = response.content.decode()
    assert "Predictor comparison queued" in html
    assert 'id="acc-predictors-status"><strong>Queued</strong> 0 minutes ago by admin;' in html
    assert LabelingProject.objects.get(pk=project.pk).predictor_comparison["status"] == "queued"


def test_queueing_again_keeps_the_last_report_shown(staff, project, fakes, monkeypatch):
    comparison.compare_task(project.pk)
    monkeypatch.setattr("django_q.tasks.async_task", lambda *args, **kwargs: None)
    html = staff.post(page(project), {"action": "compare-predictors"}, follow=True).content.decode()
    assert "<strong>Queued</strong>" in html and 'id="acc-predictors-table"' in html


def test_the_button_needs_the_change_permission(client, project, monkeypatch):
    queued = []
    monkeypatch.setattr("django_q.tasks.async_task", lambda func, *args, **kwargs: queued.append(func))
    client.force_login(User.objects.create_user("user", password="pw"))
    response = client.post(page(project), {"action": "compare-predictors"})
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    viewer = User.objects.create_user("clerk", password="pw", is_staff=True)
    viewer.user_permissions.set(Permission.objects.filter(codename="view_labelingproject"))
    client.force_login(viewer)
    html = client.get(page(project)).content.decode()
    assert "Starting a comparison needs the permission to change labeling projects" in html
    assert 'id="acc-compare-predictors"' not in html
    assert client.post(page(project), {"action": "compare-predictors"}).status_code == 403
    assert queued == [] and LabelingProject.objects.get(pk=project.pk).predictor_comparison == {}


def test_an_unavailable_embedding_worker_is_stored_and_shown(staff, project, monkeypatch):
    monkeypatch.setattr("workers.inference.chat", ExamplesHelpChat(answers=LABELS))
    monkeypatch.setattr("workers.inference.embed", FakeEmbed(fail=True))
    assert comparison.compare_task(project.pk) is None
    state = LabelingProject.objects.get(pk=project.pk).predictor_comparison
    assert state["status"] == "failed" and "all-MiniLM-L6-v2" in state["error"] and state["report"] is None
    response = staff.get(page(project))
    assert response.status_code == 200
    assert "The comparison failed: No worker has the model &#x27;all-MiniLM-L6-v2&#x27; loaded" in (
        response.content.decode()
    )


def test_a_project_no_predictor_applies_to_fails_with_the_reasons(staff, project, fakes):
    LabelingProject.objects.filter(pk=project.pk).update(model=None, label_config=MULTI)
    comparison.compare_task(project.pk)
    state = LabelingProject.objects.get(pk=project.pk).predictor_comparison
    assert state["status"] == "failed"
    assert state["error"].startswith("No predictor applies to this project: ")
    assert "single-choice Choices control" in state["error"] and "no active LLM model" in state["error"]
    html = staff.get(page(project)).content.decode()
    assert 'id="acc-predictors-error"' in html


def test_sizes_that_fit_the_ground_truth():
    assert comparison.fitting_sizes(24) == [5, 10]
    assert comparison.fitting_sizes(2000) == [5, 10, 20, 50, 100, 200, 500, 1000]
    assert comparison.fitting_sizes(5) == [4]  # fewer than the smallest: the whole pool
    assert comparison.fitting_sizes(0) == []


def test_too_little_ground_truth_is_the_stored_error(staff, fakes):
    small = LabelingProject.objects.create(ls_project="32.1", ls_project_id=32, label_config=CHOICES)
    add_ground_truth(small, 1, "good movie", "Positive")
    comparison.compare_task(small.pk)
    state = LabelingProject.objects.get(pk=small.pk).predictor_comparison
    assert state["status"] == "failed" and "has 1 ground-truth examples: too few" in state["error"]
    assert "too few to hold 0 out" in staff.get(page(small)).content.decode()
