"""The create_api_key management command."""

from io import StringIO

from django.contrib.auth import get_user_model
from django.core.management import call_command
from rest_framework.test import APIClient

from jobs.models import ApiKey


def test_create_api_key_prints_a_key_that_works(db):
    out = StringIO()
    call_command("create_api_key", "ci", "--user", "bob", "--quiet", stdout=out)
    raw_key = out.getvalue().strip()
    assert ApiKey.objects.get().owner == get_user_model().objects.get(username="bob")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    assert client.get("/v1/files").status_code == 200


def test_create_api_key_defaults_the_owner_to_the_key_name(db):
    out = StringIO()
    call_command("create_api_key", "team-a", stdout=out)
    assert ApiKey.objects.get().owner.username == "team-a"
    assert "shown once" in out.getvalue()
