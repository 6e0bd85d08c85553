"""The Django app: ``INSTALLED_APPS += ["gptimg_webhooks.django"]``.

::

    # settings.py
    GPTIMG_WEBHOOKS = {"SECRET": os.environ["GPTIMG_WEBHOOK_SECRET"]}

    # urls.py
    from gptimg_webhooks.django import webhook_view
    urlpatterns = [path("hooks/gptimg", webhook_view)]

Handlers: ``@gptimg_webhooks.on(...)`` in any module; a ``webhooks.py`` in each installed
app is imported at start-up, the way ``admin.py`` is. The default ledger is the ORM
store (``django://``): run ``manage.py migrate``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .conf import receiver
    from .views import webhook_view

__all__ = ["receiver", "webhook_view"]


def __getattr__(name: str) -> Any:
    # Lazy: INSTALLED_APPS imports this package before settings and models are ready.
    if name == "webhook_view":
        from .views import webhook_view

        return webhook_view
    if name == "receiver":
        from .conf import receiver

        return receiver
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
