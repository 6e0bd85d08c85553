"""The ``gptimg-webhooks`` command line (needs the ``cli`` extra).

Exit status, for every command:

==  ==========================================================================
0   success: valid signature, all delivered, the operation happened
1   the check or delivery failed: invalid signature, not delivered, handler failed
2   usage: bad option or argument, no secret in the environment
3   ``send``: the simulated endpoint was auto-disabled (8 consecutive failures)
4   something needed is unavailable: the store, a port, the app to import
==  ==========================================================================

Secrets come from ``GPTIMG_WEBHOOK_SECRET`` (or the variable ``--secret-env`` names),
never from the command line, where they would land in shell history and ``ps``.
"""

from __future__ import annotations

import click

from .demo import demo
from .ledger import ledger
from .listen import listen
from .provider import provider
from .send import send
from .signing import sign, verify
from .worker import worker

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gptimg-webhooks")
def main() -> None:
    """Sign, verify, send and receive gptimage2.plus webhooks; inspect the ledger.

    Exit status: 0 ok, 1 check or delivery failed, 2 usage, 3 endpoint disabled
    (send), 4 something unavailable (store, port, app).
    """


for _command in (sign, verify, send, listen, demo, ledger, worker, provider):
    main.add_command(_command)
