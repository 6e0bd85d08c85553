from __future__ import annotations

from django.db import models


class Note(models.Model):
    """A handler's own table: what the transactional tests write."""

    value = models.TextField()

    class Meta:
        app_label = "testapp"
