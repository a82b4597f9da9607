"""Fixtures shared with other suites."""

from tests.reliability.conftest import small_disk  # noqa: F401 - a real 1 MB tmpfs (the audit's disk hold)
