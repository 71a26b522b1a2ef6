from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from jobs.services import api_key_create


class Command(BaseCommand):
    help = "Creates an API key and prints it once. Files and batches belong to the key's user."

    def add_arguments(self, parser):
        parser.add_argument("name", help="A name for the key, e.g. the team or script using it.")
        parser.add_argument("--user", help="Owner's username (created if missing); default: the key name.")
        parser.add_argument("--quiet", action="store_true", help="Print only the key.")

    def handle(self, name, user=None, quiet=False, **options):
        owner, _ = get_user_model().objects.get_or_create(username=user or name)
        api_key, raw_key = api_key_create(owner=owner, name=name)
        if quiet:
            self.stdout.write(raw_key)
        else:
            self.stdout.write(f"API key '{api_key.name}' for user '{owner.username}' (store it now, it is shown once):")
            self.stdout.write(raw_key)
