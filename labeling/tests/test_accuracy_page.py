"""The admin's accuracy page: figures, heatmap, bars, comparison, empty states,
the model-vs-model button, and who may see it."""

import re

import pytest
from django.contrib.auth.models import Permission, User
from django.core.cache import cache
from django.urls import reverse

from jobs.models import Batch
from labeling.models import LabelingProject
from workers.models import RegisteredModel

from .test_evaluation import VERSION_A, VERSION_B, make_project, seed

pytestmark = pytest.mark.django_db


@pytest.fixture
def project(db):
    cache.clear()
    project = make_project(ls_id=21)
    seed(project)
    return project


@pytest.fixture
def staff(client):
    client.force_login(User.objects.create_superuser("admin", "a@example.com", "pw"))
    return client


def page(project, **query):
    url = reverse("admin:labeling_labelingproject_accuracy", args=[project.pk])
    return url + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")


def test_page_shows_figures_heatmap_bars_and_per_label_table(staff, project):
    response = staff.get(page(project, model_version=VERSION_A))
    assert response.status_code == 200
    html = response.content.decode()
    assert "Accuracy: Reviews" in html
    assert "60.0 %" in html  # sentiment accuracy 3/5
    assert "75.0 %" in html  # on the predicted tasks
    # 3 true labels x (3 predicted + no prediction) heatmap cells, with their counts in order.
    cells = re.findall(r'class="heat-cell[^"]*"[^>]*data-count="(\d+)"', html)
    assert cells == ["1", "0", "0", "1", "1", "1", "0", "0", "0", "0", "1", "0"]
    assert 'class="heat-cell diagonal"' in html
    assert "hsl(140, 55%" in html  # the diagonal is green
    assert html.count('class="f1-bar"') == 3  # one F1 bar per sentiment label
    assert "0.667" in html  # Negative's F1
    assert "MAE" in html and "0.750" in html  # stars
    assert "free-form answers (textarea)" in html
    assert VERSION_B in html  # offered for comparison


def test_comparison_side_by_side(staff, project):
    html = staff.get(page(project, model_version=VERSION_A, compare=VERSION_B)).content.decode()
    assert 'id="acc-comparison"' in html
    assert "on the 3 ground-truth tasks both predicted" in html
    assert "1 predicted by A only" in html
    assert "both right 1" in html and "only A 1" in html and "only B 1" in html
    assert html.count('class="f1-bar"') == 3 + 3 * 2  # the version's bars, then A and B per label


def test_empty_states(staff, project):
    html = staff.get(page(project)).content.decode()  # the current version has no predictions
    assert 'id="acc-no-predictions"' in html
    assert "data-count=" not in html
    other = make_project(ls_id=22)
    html = staff.get(page(other)).content.decode()
    assert 'id="acc-no-ground-truth"' in html
    assert "No ground truth yet." in html


def test_an_unknown_version_says_so_and_falls_back(staff, project):
    html = staff.get(page(project, model_version="nobody@1")).content.decode()
    assert "has no predictions of model version &#x27;nobody@1&#x27;" in html
    assert 'id="acc-no-predictions"' in html


def test_the_project_page_links_to_it(staff, project):
    html = staff.get(reverse("admin:labeling_labelingproject_change", args=[project.pk])).content.decode()
    assert f'href="{page(project)}" id="accuracy-link"' in html


def test_predict_ground_truth_with_another_model_from_the_page(staff, project):
    other = RegisteredModel.objects.create(name="other-llama", path="/o")
    html = staff.get(page(project)).content.decode()
    assert f'<option value="{other.pk}">other-llama → other-llama@' in html
    response = staff.post(page(project), {"model": other.pk}, follow=True)
    batch = Batch.objects.get()
    assert batch.metadata["labelstudio_store"] == "local"
    assert batch.input_file.line_count == 5
    html = response.content.decode()
    assert f"Batch {batch.id}: 5 ground-truth tasks for other-llama" in html
    assert f'href="/admin/jobs/batch/{batch.id}/change/"' in html  # the run is listed
    assert response.redirect_chain[-1][0].endswith(
        "compare=" + batch.metadata["labelstudio_model_version"].replace("@", "%40")
    )


def login(client, *codenames):
    user = User.objects.create_user("clerk", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client.force_login(user)
    return client


def test_refused_to_non_staff_and_to_staff_without_the_permission(client, project):
    client.force_login(User.objects.create_user("user", password="pw"))
    response = client.get(page(project))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    client.logout()
    login(client)
    assert client.get(page(project)).status_code == 403


def test_viewing_needs_view_permission_and_starting_a_run_change_permission(client, project):
    other = RegisteredModel.objects.create(name="other-llama", path="/o")
    viewer = login(client, "view_labelingproject")
    html = viewer.get(page(project, model_version=VERSION_A)).content.decode()
    assert "data-count=" in html
    assert "needs the permission to change labeling projects" in html
    assert viewer.post(page(project), {"model": other.pk}).status_code == 403
    assert not Batch.objects.exists()
    assert LabelingProject.objects.count() == 1
