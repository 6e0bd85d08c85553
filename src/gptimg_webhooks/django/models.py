"""The ledger's tables: one row per delivery (keyed by the body's SHA-256), one counter."""

from __future__ import annotations

from datetime import datetime, timezone

from django.db import models

from .._core.ledger import State

__all__ = ["Counter", "Delivery", "WebhookAccount"]


class Delivery(models.Model):
    """One delivery as the ORM ledger keeps it; times are Unix seconds, like the Store API."""

    key: models.CharField[str, str] = models.CharField(
        max_length=64, primary_key=True, help_text="SHA-256 of the body"
    )
    state: models.CharField[str, str] = models.CharField(
        max_length=16, choices=[(s.value, s.value) for s in State]
    )
    delivery_id: models.CharField[str, str] = models.CharField("delivery id", max_length=64)
    event: models.TextField[str | None, str | None] = models.TextField(null=True, blank=True)
    generation_id: models.TextField[str | None, str | None] = models.TextField(
        "generation id", null=True, blank=True
    )
    attempts: models.PositiveIntegerField[int, int] = models.PositiveIntegerField(default=0)
    token: models.CharField[str | None, str | None] = models.CharField(
        max_length=32, null=True, blank=True
    )
    lease_until: models.FloatField[float | None, float | None] = models.FloatField(
        null=True, blank=True
    )
    available_at: models.FloatField[float | None, float | None] = models.FloatField(
        null=True, blank=True
    )
    body: models.BinaryField[bytes | None, bytes | memoryview | None] = models.BinaryField(
        null=True, blank=True
    )
    error: models.TextField[str | None, str | None] = models.TextField(
        "last error", null=True, blank=True
    )
    created_at: models.FloatField[float, float] = models.FloatField()
    updated_at: models.FloatField[float, float] = models.FloatField()
    traceparent: models.TextField[str | None, str | None] = models.TextField(
        null=True, blank=True, help_text="W3C trace context of the receiving span"
    )

    class Meta:
        db_table = "gptimg_webhooks_delivery"
        verbose_name_plural = "deliveries"
        indexes = [models.Index(fields=["state", "updated_at"], name="gptimg_wh_state_updated")]

    def __str__(self) -> str:
        return f"{self.event or '?'} {self.generation_id or self.key[:12]} ({self.state})"

    @property
    def created(self) -> datetime:
        return datetime.fromtimestamp(self.created_at, tz=timezone.utc)

    @property
    def updated(self) -> datetime:
        return datetime.fromtimestamp(self.updated_at, tz=timezone.utc)


class Counter(models.Model):
    """Counters shared by every process, e.g. a failure streak (names up to 255 chars)."""

    name: models.CharField[str, str] = models.CharField(max_length=255, primary_key=True)
    value: models.IntegerField[int, int] = models.IntegerField(default=0)

    class Meta:
        db_table = "gptimg_webhooks_counter"


class WebhookAccount(models.Model):
    """One provider account: its endpoint ``<PATH>/<name>``, webhook secrets and API key.

    Used when ``GPTIMG_WEBHOOKS["ACCOUNTS"] == "database"``. Secrets are comma separated
    (new first while rotating) and, like the API key, never shown again once saved.
    """

    name: models.SlugField[str, str] = models.SlugField(
        max_length=64, primary_key=True, help_text="lower-case; the endpoint is <PATH>/<name>"
    )
    secrets: models.TextField[str, str] = models.TextField(
        help_text="whsec_... values, comma separated, the newest first"
    )
    api_key: models.TextField[str, str] = models.TextField(
        "API key", blank=True, default="", help_text="gimg_... (for polling the provider)"
    )
    enabled: models.BooleanField[bool, bool] = models.BooleanField(default=True)

    class Meta:
        db_table = "gptimg_webhooks_account"
        verbose_name = "webhook account"

    def __str__(self) -> str:
        return self.name
