from __future__ import annotations

from gptimg_webhooks.testing import Gallery, WebhookClient, events


def test_new_delivery_is_processed_and_recorded_once(
    client: WebhookClient, gallery: Gallery
) -> None:
    result = client.deliver(events.succeeded(generation_id="gen_one"))
    assert result.processed and result.accepted
    assert [r["generationId"] for r in gallery.rows()] == ["gen_one"]


def test_retry_and_forged_replay_are_duplicates(client: WebhookClient, gallery: Gallery) -> None:
    first = client.deliver()
    assert client.retry(first).duplicate
    replay = client.replay(first)
    assert replay.duplicate
    assert replay.delivery.delivery_id != first.delivery.delivery_id
    assert len(gallery.rows()) == 1


def test_bad_signature_is_unauthorized_and_missing_header_rejected(client: WebhookClient) -> None:
    bad = client.deliver(wrong_secret=True)
    assert bad.unauthorized and bad.error == "invalid_signature" and not bad.accepted
    no_id = client.deliver(omit=["delivery"])
    assert no_id.rejected and no_id.status == 400 and no_id.error == "invalid_headers"


def test_unknown_event_is_ignored_and_flaky_handler_fails_then_succeeds(
    client: WebhookClient,
) -> None:
    assert client.deliver(events.unknown()).ignored
    flaky = client.deliver(events.succeeded(generation_id="gen_flaky_x"))
    assert flaky.failed and flaky.error == "handler_failed"
    assert client.retry(flaky).processed


def test_get_on_the_webhook_path_is_405(client: WebhookClient) -> None:
    assert client.request("GET").status == 405
