"""Shared pytest fixtures. Fixture modules are registered here as plugins."""

pytest_plugins = ["tests.moto_server", "tests.vaultenv"]
