"""The operators' console: the batch list (newest first, columns, filters), the
dashboard page with its SVG chart, and the offline API reference."""

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from .factories import batch_row, make_user

pytestmark = pytest.mark.django_db


def row(owner, status="completed", model="m-a", created_ago_days=0, seconds=None, done=0, tout=0):
    now = timezone.now()
    fields = {}
    if seconds is not None:
        fields = {"in_progress_at": now - timedelta(seconds=seconds + 60), "completed_at": now - timedelta(seconds=60)}
    return batch_row(
        owner,
        status,
        model=model,
        done=done,
        output_tokens=tout,
        created_at=now - timedelta(days=created_ago_days),
        **fields,
    )


def listed(admin_client, **params):
    return [b.pk for b in admin_client.get("/admin/jobs/batch/", params).context["cl"].result_list]


def test_newest_first_with_its_columns(admin_client):
    alice = make_user("alice")
    old = row(alice, created_ago_days=3)
    new = row(alice, created_ago_days=0, seconds=125, done=4)
    mid = row(alice, created_ago_days=1)
    assert listed(admin_client) == [new.pk, mid.pk, old.pk]
    page = admin_client.get("/admin/jobs/batch/").content.decode()
    headers = re.findall(r'<th scope="col" class="[^"]*column-(\w+)', page)
    assert headers == ["id", "status", "created_at", "owner", "model", "queue", "duration", "progress_bar"]
    assert "2m 05s" in page


def test_filters_by_owner_model_and_date(admin_client):
    alice, bob = make_user("alice"), make_user("bob")
    a = row(alice, model="m-a", created_ago_days=0)
    b = row(bob, model="m-b", created_ago_days=10)
    assert listed(admin_client, owner__id__exact=bob.pk) == [b.pk]
    assert listed(admin_client, model="m-a") == [a.pk]
    since = (timezone.now() - timedelta(days=1)).isoformat(sep=" ", timespec="seconds")
    assert listed(admin_client, **{"created_at__gte": since}) == [a.pk]


def test_dashboard_figures_and_chart(admin_client):
    alice = make_user("alice")
    row(alice, seconds=60, done=3, tout=120)
    row(alice, seconds=180, done=1, tout=40, model="m-b")
    row(alice, status="failed")
    response = admin_client.get("/admin/jobs/batch/dashboard/")
    assert response.status_code == 200
    stats = response.context["stats"]
    assert stats["total_batches"] == 3
    assert stats["success_rate"] == pytest.approx(2 / 3, abs=1e-4)
    page = response.content.decode()
    assert "2m 00s" in page  # the average of 60 s and 180 s
    assert "67 %" in page
    bars = response.context["chart"]["bars"]
    assert len(bars) == 24
    # Both completed in the current hour: 160 tokens, the tallest bar.
    assert bars[-1]["tokens"] == 160 and bars[-1]["height"] == 140
    assert sum(bar["tokens"] for bar in bars) == 160
    assert page.count("<rect ") == 24
    assert "<script" not in page.split('<svg class="throughput"')[1].split("</svg>")[0]


def test_dashboard_is_for_staff(client, db):
    response = client.get("/admin/jobs/batch/dashboard/")
    assert response.status_code == 302


def test_admin_index_links_dashboard_and_api_reference(admin_client):
    page = admin_client.get("/admin/").content.decode()
    assert 'href="/admin/jobs/batch/dashboard/"' in page
    assert 'href="/docs/"' in page


def test_api_reference_is_served_offline(client):
    response = client.get("/docs/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "cdn" not in page.lower()
    assets = re.findall(r'(?:src|href)="(/static/drf_spectacular_sidecar/[^"]+)"', page)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets), assets
    for asset in assets:
        assert client.get(asset).status_code == 200, asset
    assert "/v1/openapi.json" in page
