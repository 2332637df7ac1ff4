"""Shared pytest fixtures. Fixture modules are registered here as plugins."""

import pytest

pytest_plugins = ["tests.moto_server", "tests.vaultenv", "tests.sshd"]


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--slow``: property tests run thousands of examples instead of CI's hundreds."""
    parser.addoption(
        "--slow", action="store_true", default=False, help="run property tests with thousands of examples"
    )
