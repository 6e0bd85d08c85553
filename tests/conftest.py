from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

from tests.support.services import IN_CI

# The properties test behaviour, not speed: on a loaded 2-core CI machine one example can
# take longer than hypothesis' default 200 ms deadline, which would fail a correct run.
settings.register_profile("gptimg", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("gptimg")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    skipped = terminalreporter.stats.get("skipped", [])
    if IN_CI and skipped:
        terminalreporter.write_line(
            f"CI=true: {len(skipped)} skipped test(s) count as failures", red=True
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if IN_CI and reporter is not None and reporter.stats.get("skipped") and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
