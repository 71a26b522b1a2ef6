"""The admin accuracy page in headless Chromium against the running stack: a project
with ground truth and two model versions' predictions (stored through the stack's
own manage.py shell), the heatmap and bars drawn, then the real engine asked about
the ground-truth tasks from the page's button and compared with the first version."""

import json
import re
import time

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from .conftest import screenshot

pytestmark = pytest.mark.e2e

LS_PROJECT_ID = 4242
VERSION_A = "qwen-7b@3f2a9c1e"
VERSION_B = "embedding-knn@blend@77aa01"

# Runs in the stack's `manage.py shell`: 40 ground-truth tasks (sentiment, people and
# organisations, a star rating) and two versions' predictions with known mistakes.
SEED = """
import random
from datetime import timedelta
from django.utils import timezone
from labeling.models import Annotation, LabelingProject, LabelingTask, PredictionLog
from workers.models import RegisteredModel

CONFIG = '''<View><Text name="text" value="$text"/>
<Choices name="sentiment" toName="text">
<Choice value="Positive"/><Choice value="Negative"/><Choice value="Neutral"/></Choices>
<Labels name="entities" toName="text"><Label value="PER"/><Label value="ORG"/></Labels>
<Rating name="stars" toName="text" maxRating="5"/></View>'''
rng = random.Random(7)
project, _ = LabelingProject.objects.update_or_create(
    ls_project="{ls_id}.1790000000",
    defaults=dict(ls_project_id={ls_id}, title="Product reviews", label_config=CONFIG,
                  model=RegisteredModel.objects.get(name="tiny-llama"), max_tokens=400),
)
people, orgs = ["Anna", "Marek", "Li Wei", "Sofia"], ["Acme", "Globex", "Initech"]
labels = ["Positive", "Negative", "Neutral"]
now = timezone.now()

def choice(v): return {{"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {{"choices": [v]}}}}
def span(s, e, text, label): return {{"from_name": "entities", "to_name": "text", "type": "labels",
                                      "value": {{"start": s, "end": e, "text": text, "labels": [label]}}}}
def stars(v): return {{"from_name": "stars", "to_name": "text", "type": "rating", "value": {{"rating": v}}}}
def confuse(truth, right):
    return truth if rng.random() < right else rng.choice([x for x in labels if x != truth])

for n in range(1, 41):
    person, org = rng.choice(people), rng.choice(orgs)
    text = f"{{person}} bought a kettle from {{org}} last week."
    truth = labels[n % 3] if n % 7 else "Positive"
    rating = {{"Positive": 5, "Neutral": 3, "Negative": 1}}[truth]
    task, _ = LabelingTask.objects.update_or_create(
        project=project, ls_task_id=n, defaults={{"data": {{"text": text}}}})
    p_end, o_start = len(person), text.index(org)
    gold = [choice(truth), span(0, p_end, person, "PER"), span(o_start, o_start + len(org), org, "ORG"), stars(rating)]
    Annotation.objects.update_or_create(project=project, ls_annotation_id=1000 + n, defaults=dict(
        task=task, result=gold, ground_truth=True, ground_truth_at=now))
    if n <= 36:
        a = [choice(confuse(truth, 0.8)), span(0, p_end, person, "PER"),
             span(o_start, o_start + len(org) - (1 if n % 4 == 0 else 0), org, "ORG"),
             stars(max(1, min(5, rating + rng.choice([0, 0, 1, -1]))))]
        PredictionLog.objects.create(project=project, task_id=n, result=a, model_version="{version_a}", latency_ms=900)
    if n % 5:
        b = [choice(confuse(truth, 0.6))]
        PredictionLog.objects.create(project=project, task_id=n, result=b, model_version="{version_b}", latency_ms=12)
LabelingProject.objects.filter(pk=project.pk).update(ground_truth_revision=1)
print(project.pk)
"""


def full_page_screenshot(browser, name):
    """The whole page in one picture: the window made as tall as the document for a moment."""
    width, height = browser.get_window_size()["width"], browser.get_window_size()["height"]
    total = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(width, min(total + 120, 6000))
    try:
        return screenshot(browser, name)
    finally:
        browser.set_window_size(width, height)


def wait_until(check, timeout, message):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(1)
    raise AssertionError(message)


def test_accuracy_page_draws_the_figures_and_compares_with_a_model_run_from_it(stack, admin_login):
    browser = admin_login
    seeded = stack.manage(
        "shell", "-c", SEED.format(ls_id=LS_PROJECT_ID, version_a=VERSION_A, version_b=VERSION_B), timeout=120
    )
    project_pk = int(seeded.strip().splitlines()[-1])
    page = f"{stack.admin_url}labeling/labelingproject/{project_pk}/accuracy/"

    browser.get(f"{stack.admin_url}labeling/labelingproject/{project_pk}/change/")
    browser.find_element(By.ID, "accuracy-link").click()
    WebDriverWait(browser, 30).until(lambda b: b.current_url == page and b.find_elements(By.ID, "acc-summary"))
    # The current version (tiny-llama's) has no predictions yet: the page says so.
    assert browser.find_element(By.ID, "acc-no-predictions").is_displayed()

    Select(browser.find_element(By.ID, "acc-version")).select_by_value(VERSION_A)
    browser.find_element(By.ID, "acc-show").click()
    WebDriverWait(browser, 20).until(lambda b: "model_version=" in b.current_url)
    Select(browser.find_element(By.ID, "acc-compare")).select_by_value(VERSION_B)
    browser.find_element(By.ID, "acc-show").click()
    WebDriverWait(browser, 20).until(lambda b: b.find_elements(By.ID, "acc-comparison"))
    cells = browser.find_elements(By.CSS_SELECTOR, "#control-sentiment td.heat-cell")
    assert len(cells) == 3 * 4  # three true labels x (three predicted + no prediction)
    assert sum(int(c.get_attribute("data-count")) for c in cells) == 40
    diagonal = browser.find_element(By.CSS_SELECTOR, "#control-sentiment td.heat-cell.diagonal")
    assert diagonal.value_of_css_property("background-color") != "rgba(0, 0, 0, 0)"
    bars = browser.find_elements(By.CSS_SELECTOR, "#control-sentiment rect.f1-bar")
    assert len(bars) == 3 and all(float(b.get_attribute("width")) > 0 for b in bars)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#control-entities rect.f1-bar")) == 4  # exact, overlap x 2
    assert "MAE" in browser.find_element(By.ID, "control-stars").text
    comparison = browser.find_element(By.ID, "acc-comparison").text
    assert "on the 29 ground-truth tasks both predicted" in comparison  # n <= 36 and n % 5 != 0
    assert browser.find_element(By.ID, "acc-missing").text == "4"
    # The API agrees with the page.
    api = stack.manage(
        "shell",
        "-c",
        "import json; from labeling.accuracy_views import accuracy_payload, project_for; "
        f"print(json.dumps(accuracy_payload(project_for('{LS_PROJECT_ID}'), '{VERSION_A}')))",
    )
    payload = json.loads(api.strip().splitlines()[-1])
    assert (payload["tasks"], payload["predicted"], payload["missing_predictions"]) == (40, 36, 4)
    accuracy = payload["controls"]["sentiment"]["accuracy"]
    assert f"{accuracy * 100:.1f} %" in browser.find_element(By.ID, "control-sentiment").text
    full_page_screenshot(browser, "accuracy-page")

    # Model vs model: tiny-llama (the real engine) over the 40 ground-truth tasks.
    run_model = Select(browser.find_element(By.ID, "acc-run-model"))
    tiny = next(o for o in run_model.options if o.text.startswith("tiny-llama"))
    run_model.select_by_value(tiny.get_attribute("value"))
    browser.find_element(By.ID, "acc-run-start").click()
    message = WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, "ul.messagelist"))[0]
    assert "40 ground-truth tasks for tiny-llama" in message.text
    run_page = browser.current_url

    def stored():
        count = stack.manage(
            "shell",
            "-c",
            "from labeling.models import PredictionLog as P; "
            f"print(P.objects.filter(project_id={project_pk}, model_version__startswith='tiny-llama@').count())",
        )
        return int(count.strip().splitlines()[-1]) == 40

    # The batch runs on the real engine; then the cluster stores every answer (failed ones with their error).
    wait_until(stored, 300, "the ground-truth batch's 40 predictions were not stored within 300 s")
    browser.get(run_page)
    runs = browser.find_elements(By.CSS_SELECTOR, "#acc-runs tr")
    assert len(runs) == 2 and "completed" in runs[1].text and "40 / 40" in runs[1].text
    comparison = browser.find_element(By.ID, "acc-comparison").text
    assert f"A = {VERSION_A}" in comparison and "B = tiny-llama@" in comparison
    compared = int(re.search(r"on the (\d+) ground-truth tasks both predicted", comparison).group(1))
    assert 0 < compared <= 36
    assert browser.find_elements(By.CSS_SELECTOR, "#acc-comparison rect.f1-bar")
    full_page_screenshot(browser, "accuracy-page-model-vs-model")
