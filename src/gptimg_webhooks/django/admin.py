"""The ledger in the Django admin: read-only records, replay and resolve actions.

Nothing here can show a secret: the ledger never stores one (a delivery keeps which
secret matched only while its handlers run), and the lease token is left out too.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from .._core.errors import ConfigurationError
from .._core.ledger import State
from .._core.signature import parse_secrets
from .models import Delivery, WebhookAccount

__all__ = ["DeliveryAdmin", "WebhookAccountAdmin"]

_BODY_PREVIEW = 20_000


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = (
        "short_key",
        "state",
        "event",
        "generation_id",
        "attempts",
        "short_error",
        "created",
        "updated",
    )
    list_filter = ("state", "event")
    search_fields = ("=key", "=delivery_id", "generation_id")
    ordering = ("-updated_at",)
    fields = (
        "key",
        "state",
        "event",
        "generation_id",
        "delivery_id",
        "attempts",
        "error",
        "created",
        "updated",
        "lease_until",
        "available_at",
        "traceparent",
        "payload",
    )
    readonly_fields = fields
    actions = ("replay_failed", "mark_resolved")
    list_per_page = 50

    @admin.display(description="key")
    def short_key(self, obj: Delivery) -> str:
        return obj.key[:12]

    @admin.display(description="last error")
    def short_error(self, obj: Delivery) -> str:
        error = obj.error or ""
        return error if len(error) <= 80 else error[:79] + "…"

    @admin.display(description="created", ordering="created_at")
    def created(self, obj: Delivery) -> datetime:
        return obj.created

    @admin.display(description="updated", ordering="updated_at")
    def updated(self, obj: Delivery) -> datetime:
        return obj.updated

    @admin.display(description="payload (kept until done)")
    def payload(self, obj: Delivery) -> str:
        if obj.body is None:
            return "-"
        text = bytes(obj.body)[:_BODY_PREVIEW].decode("utf-8", errors="replace")
        return format_html("<pre style='white-space:pre-wrap'>{}</pre>", text)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a deleted record would let a replay of its body run again

    @admin.action(
        permissions=["change"],
        description="Replay failed deliveries (run their handlers again now)",
    )
    def replay_failed(self, request: HttpRequest, queryset: QuerySet[Delivery]) -> None:
        from .replay import replay

        keys = list(
            queryset.filter(state__in=(State.FAILED.value, State.DEAD.value)).values_list(
                "key", flat=True
            )
        )
        outcomes = replay(keys)
        done = sum(1 for s in outcomes.values() if s in ("processed", "ignored"))
        summary = ", ".join(f"{k[:12]}: {s}" for k, s in outcomes.items())
        level = messages.SUCCESS if done == len(keys) else messages.WARNING
        self.message_user(
            request, f"Replayed {len(keys)}, {done} now done. {summary}".strip(), level
        )

    @admin.action(
        permissions=["change"], description="Mark resolved (done, without running handlers)"
    )
    def mark_resolved(self, request: HttpRequest, queryset: QuerySet[Delivery]) -> None:
        count = queryset.filter(state__in=(State.FAILED.value, State.DEAD.value)).update(
            state=State.DONE.value, token=None, lease_until=None, updated_at=time.time()
        )
        self.message_user(request, f"Marked {count} delivery(ies) resolved.", messages.SUCCESS)


class WebhookAccountForm(forms.ModelForm):  # type: ignore[type-arg]
    """Secrets and keys are write-only: blank on edit keeps the saved value."""

    secrets = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="whsec_... values, comma separated, the newest first; blank keeps them",
    )
    api_key = forms.CharField(
        label="API key",
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="gimg_...; blank keeps the saved key",
    )

    class Meta:
        model = WebhookAccount
        fields = ("name", "secrets", "api_key", "enabled")

    def clean_secrets(self) -> str:
        value: str = self.cleaned_data.get("secrets") or ""
        if not value:
            if self.instance.pk and self.instance.secrets:
                return str(self.instance.secrets)
            raise forms.ValidationError("an account needs its webhook secret")
        try:
            parse_secrets(value)
        except ConfigurationError as exc:
            raise forms.ValidationError(str(exc)) from exc
        return value

    def clean_api_key(self) -> str:
        value: str = self.cleaned_data.get("api_key") or ""
        return value or (str(self.instance.api_key) if self.instance.pk else "")


@admin.register(WebhookAccount)
class WebhookAccountAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    form = WebhookAccountForm
    list_display = ("name", "enabled", "has_api_key")
    list_filter = ("enabled",)
    search_fields = ("name",)

    @admin.display(boolean=True, description="API key")
    def has_api_key(self, obj: WebhookAccount) -> bool:
        return bool(obj.api_key)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return ("name",) if obj is not None else ()
