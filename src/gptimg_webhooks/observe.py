"""Observers: hook metrics, tracing or your own code into the receiver, with plain data.

::

    class Audit(Observer):
        def answered(self, answer: Answer) -> None:
            print(answer.status, answer.outcome, answer.event, answer.latency)

    hooks = Webhooks(observers=[Audit()])

See :mod:`gptimg_webhooks.metrics` and :mod:`gptimg_webhooks.tracing` for two complete ones.
"""

from __future__ import annotations

from ._core.observe import Answer, Observer, Observers, Receipt, Run

__all__ = ["Answer", "Observer", "Observers", "Receipt", "Run"]
