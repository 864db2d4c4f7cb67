"""Real clusters in Docker (testcontainers). Every test here is marked ``integration`` and skips,
saying why, when no Docker engine answers. Run with ``pytest -m integration tests/integration``."""

from __future__ import annotations

import pytest


def docker_unavailable_reason() -> str | None:
    """None when a Docker engine answers a ping, else why not."""
    try:
        import docker
    except ImportError:
        return "the docker package is not installed (pip install testcontainers)"
    try:
        client = docker.from_env(timeout=5)
        client.ping()
        client.close()
    except Exception as exc:  # no socket, permission denied, daemon down
        return f"no Docker engine answers ({type(exc).__name__}: {str(exc)[:120]})"
    return None


@pytest.fixture(scope="session")
def docker_ready() -> None:
    reason = docker_unavailable_reason()
    if reason:
        pytest.skip(f"integration tests need Docker: {reason}")
