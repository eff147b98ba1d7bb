"""Observability: JSON logs, Prometheus metrics, health endpoints."""
