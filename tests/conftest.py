"""Root conftest: makes the shared fixtures (real NATS, real PostgreSQL, managed processes) available to every test."""

pytest_plugins = [
    "tests.fixtures.nats",
    "tests.fixtures.postgres",
    "tests.fixtures.processes",
]
