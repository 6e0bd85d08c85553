"""The app config: store scheme, system checks and ``webhooks.py`` autodiscovery."""

from __future__ import annotations

from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules

from ..stores import register_scheme

__all__ = ["GptimgWebhooksConfig", "autodiscover"]


def autodiscover() -> None:
    """Import ``webhooks.py`` of every installed app, so its ``@on`` handlers register."""
    autodiscover_modules("webhooks")


class GptimgWebhooksConfig(AppConfig):
    name = "gptimg_webhooks.django"
    label = "gptimg_webhooks"
    verbose_name = "gptimage2.plus webhooks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.core import checks

        from .checks import check_settings

        register_scheme("django", "gptimg_webhooks.django.store:DjangoStore")
        checks.register(check_settings, "gptimg_webhooks")
        autodiscover()
