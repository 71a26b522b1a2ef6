import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "batchsite.settings")

from batchsite.startup import prepare  # noqa: E402  (needs DJANGO_SETTINGS_MODULE)

prepare()
application = get_wsgi_application()
