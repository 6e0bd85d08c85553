"""Include at the site root: ``path("", include("gptimg_webhooks.django.urls"))``.

The route is ``GPTIMG_WEBHOOKS["PATH"]`` (default ``/hooks/gptimg``); reverse it as
``gptimg_webhooks:receive``.
"""

from __future__ import annotations

from django.urls import path

from .conf import options
from .views import webhook_view

app_name = "gptimg_webhooks"

urlpatterns = [
    path(str(options().get("PATH", "/hooks/gptimg")).lstrip("/"), webhook_view, name="receive"),
]
