import pytest

# The shared helpers assert too; rewrite them so failures show values, as in tests.
pytest.register_assert_rewrite("jobs.tests.factories")
