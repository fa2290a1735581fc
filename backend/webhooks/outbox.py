"""Moved to backend/service/webhook_outbox.py; this name stays until every importer has switched."""

from __future__ import annotations

from backend.service.webhook_outbox import add_delivery, delivery_host, job_deliveries

__all__ = ["add_delivery", "delivery_host", "job_deliveries"]
