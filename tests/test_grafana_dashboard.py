"""deploy/grafana-dashboard.json is valid JSON and asks only for metrics /metrics exposes."""

import json
import re
from pathlib import Path

import pytest

from jobs.tests.factories import make_user
from labeling.models import LabelingProject, PredictionLog
from tests.test_metrics import make_row, scrape
from workers.realtime import latency
from workers.tests.factories import make_worker

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana-dashboard.json"


def exprs():
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_the_dashboard_is_grafana_json():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    assert len(dashboard["panels"]) >= 10
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


@pytest.mark.django_db
def test_every_expr_names_an_exposed_metric():
    from django.test import Client

    make_row(make_user("ops"), "completed", total=1, done=1, tin=1, tout=1, seconds=5)
    make_worker(
        memory_kind="gpu", memory_used=1, memory_total=2, host_memory_used=3, last_load_model="m", last_load_seconds=9
    )
    project = LabelingProject.objects.create(ls_project="1.1", ls_project_id=1, label_config="<View/>")
    PredictionLog.objects.create(project=project, result=[], model_version="v", latency_ms=5)
    latency.observe("/v1/chat/completions", 200, 0.3)
    exposed = {name for name, _labels in scrape(Client())}
    used = {name for expr in exprs() for name in re.findall(r"\bvllm_batch_[a-z0-9_]+", expr)}
    assert used, "the dashboard queries nothing"
    assert used <= exposed, sorted(used - exposed)
