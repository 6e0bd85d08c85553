from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse

from gptimg_webhooks.testing import render_gallery

from .models import Invocation


def _rows() -> list[dict[str, object]]:
    return [i.as_row() for i in Invocation.objects.order_by("id")]


def index(request: HttpRequest) -> HttpResponse:
    return HttpResponse(render_gallery(_rows(), title="Django gallery"))


def generations(request: HttpRequest) -> JsonResponse:
    return JsonResponse(_rows(), safe=False)
