"""Suite-wide fixtures: the throwaway PostgreSQL cluster lives in tests/support/postgres.py."""

pytest_plugins = ["tests.support.postgres"]
