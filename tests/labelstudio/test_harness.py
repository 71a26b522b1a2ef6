"""The test Label Studio itself: it runs the pinned version, the legacy token works, projects can be made."""

import httpx
import pytest

from labeling.client import LabelStudio, LabelStudioError

pytestmark = pytest.mark.e2e

CHOICES = """<View>
  <Text name="text" value="$text"/>
  <Choices name="sentiment" toName="text"><Choice value="Positive"/><Choice value="Negative"/></Choices>
</View>"""


def test_label_studio_runs_the_pinned_version(label_studio):
    answer = httpx.get(f"{label_studio.url}/api/version", timeout=10).json()
    assert answer["release"] == "1.23.2"
    print(", ".join(f"Label Studio {step}: {seconds:.1f} s" for step, seconds in label_studio.times.items()))


def test_the_legacy_token_works_and_a_wrong_one_is_refused(label_studio, ls):
    assert ls.request("GET", "/api/current-user/whoami")["email"] == label_studio.username
    with LabelStudio(label_studio.url, "0" * 40) as stranger, pytest.raises(LabelStudioError) as err:
        stranger.project(1)
    assert err.value.status == 401


def test_a_project_with_tasks_can_be_created_and_read_back(ls):
    project = ls.create_project("harness check", CHOICES)
    ids = ls.import_tasks(project["id"], [{"data": {"text": f"text {i}"}} for i in range(3)])
    assert len(ids) == 3
    assert [t["data"]["text"] for t in ls.tasks(project["id"])] == ["text 0", "text 1", "text 2"]
    assert ls.project(project["id"])["title"] == "harness check"
