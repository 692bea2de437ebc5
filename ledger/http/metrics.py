"""Prometheus metrics at /metrics (to be written)."""

from __future__ import annotations

from fastapi import FastAPI


def install(app: FastAPI) -> None:
    """Add /metrics and the per-route latency middleware to `app`."""
