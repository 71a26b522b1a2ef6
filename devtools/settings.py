"""Settings of the dev stack (end-to-end tests, demo, benchmarks): the product's,
plus this app for its commands (make_tiny_model, register_default_models).
The product itself never imports devtools."""

from batchsite.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "devtools"]  # noqa: F405
