import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "batchsite.settings")

from batchsite.startup import prepare  # noqa: E402  (needs DJANGO_SETTINGS_MODULE)

prepare()
application = get_asgi_application()
