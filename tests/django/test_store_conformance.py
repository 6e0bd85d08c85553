"""The shared ledger conformance suite, run against the Django ORM store on both databases."""

from __future__ import annotations

from typing import Any

import pytest

from gptimg_webhooks.django.store import DjangoStore
from tests.django.conftest import in_other_thread
from tests.django.testapp.models import Note
from tests.stores.conformance import Reopen, StoreConformance, TransactionalConformance
from tests.support.services import ensure_postgres


class NoteEffects:
    """A handler's own table, written through the ORM inside the store's transaction."""

    def __init__(self, alias: str) -> None:
        self.alias = alias

    def write(self, tx: Any, value: str) -> None:
        Note.objects.using(self.alias).create(value=value)

    async def awrite(self, tx: Any, value: str) -> None:
        raise NotImplementedError  # the store's transactions are thread-bound

    def rows(self) -> list[str]:
        return in_other_thread(
            self.alias,
            lambda: list(
                Note.objects.using(self.alias).order_by("id").values_list("value", flat=True)
            ),
        )


class _DjangoStoreConformance(StoreConformance, TransactionalConformance):
    alias = "default"

    @pytest.fixture
    def reopen(self) -> Reopen:
        return lambda: DjangoStore(self.alias)

    @pytest.fixture
    def effects(self) -> NoteEffects:
        return NoteEffects(self.alias)


@pytest.mark.django_db(transaction=True)
class TestDjangoStoreOnSQLite(_DjangoStoreConformance):
    alias = "default"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True, databases=["default", "pg"])
class TestDjangoStoreOnPostgres(_DjangoStoreConformance):
    alias = "pg"

    @pytest.fixture(autouse=True)
    def _postgres(self) -> None:
        ensure_postgres()
