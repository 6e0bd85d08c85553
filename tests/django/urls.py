from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from gptimg_webhooks.django import webhook_view

urlpatterns = [
    path("admin/", admin.site.urls),
    path("hooks/gptimg", webhook_view),
    path("hooks/gptimg/<str:account>", webhook_view),  # with GPTIMG_WEBHOOKS["ACCOUNTS"]
    path("included/", include("gptimg_webhooks.django.urls")),
]
