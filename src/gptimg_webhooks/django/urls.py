"""Include at the site root: ``path("", include("gptimg_webhooks.django.urls"))``.

The route is ``GPTIMG_WEBHOOKS["PATH"]`` (default ``/hooks/gptimg``); reverse it as
``gptimg_webhooks:receive``.
"""

from __future__ import annotations

from django.urls import path

from .conf import options
from .views import webhook_view

app_name = "gptimg_webhooks"

_PATH = str(options().get("PATH", "/hooks/gptimg")).strip("/")

urlpatterns = [path(_PATH, webhook_view, name="receive")]
if "ACCOUNTS" in options():  # one endpoint per account: <PATH>/<name>
    urlpatterns.append(path(f"{_PATH}/<str:account>", webhook_view, name="receive_account"))
