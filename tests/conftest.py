"""Root conftest: makes the shared fixtures (real NATS, real PostgreSQL, managed processes) available to every test."""

pytest_plugins = [
    "tests.fixtures.nats",
    "tests.fixtures.postgres",
    "tests.fixtures.processes",
    "tests.fixtures.stack",
]

# Property tests are deterministic: the same examples on every run and machine (no example database,
# derandomized), and never timed (the machine may be busy).
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("infernet", derandomize=True, database=None, deadline=None,
                                      print_blob=True)
_hypothesis_settings.load_profile("infernet")
