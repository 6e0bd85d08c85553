from __future__ import annotations

from typing import Any

from django.db import models


class Invocation(models.Model):
    """One row per handler invocation (appended, never upserted: a double run shows)."""

    generation_id = models.TextField(null=True)
    event = models.TextField()
    status = models.TextField(null=True)
    outputs = models.JSONField(default=list)
    error = models.TextField(null=True)

    def as_row(self) -> dict[str, Any]:
        return {
            "generationId": self.generation_id,
            "event": self.event,
            "status": self.status,
            "outputs": self.outputs,
            "error": self.error,
        }
