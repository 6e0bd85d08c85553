from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from gallery import views
from prometheus_client import REGISTRY

from gptimg_webhooks import health, metrics
from gptimg_webhooks.django.conf import receiver

# The receiver is built on first use (a blank secret must fail `manage.py check`, not
# the URLconf's import): the observer comes from settings, the gauges read it lazily.
REGISTRY.register(metrics.LedgerCollector(receiver))

urlpatterns = [
    path("", views.index, name="gallery"),
    path("generations", views.generations, name="generations"),
    path("admin/", admin.site.urls),
    # Prometheus (this process's counters, the ledger's gauges) and the health check.
    path("metrics", metrics.django_view()),
    path("healthz", health.django_view(receiver)),
    # POST /hooks/gptimg (GPTIMG_WEBHOOKS["PATH"]); or: path("hooks/gptimg", webhook_view)
    path("", include("gptimg_webhooks.django.urls")),
]
