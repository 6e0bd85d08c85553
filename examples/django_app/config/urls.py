from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from gallery import views

urlpatterns = [
    path("", views.index, name="gallery"),
    path("generations", views.generations, name="generations"),
    path("admin/", admin.site.urls),
    # POST /hooks/gptimg (GPTIMG_WEBHOOKS["PATH"]); or: path("hooks/gptimg", webhook_view)
    path("", include("gptimg_webhooks.django.urls")),
]
