"""The control plane under load: 50 good clients get every result, exactly, while
bad clients beside them get clear refusals and break nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.load.scenario import LoadSizes, run_load

# The statuses the bad clients must have met, each at least once: a run that
# missed one did not test what it claims to.
_MET = {
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "CANCELLED",
    "DEADLINE_EXCEEDED",
}


@pytest.fixture(params=["sqlite", "redis"])
def load_backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "redis":
        return str(request.getfixturevalue("redis_url"))
    return f"sqlite://{tmp_path / 'state.db'}"


async def test_good_clients_get_their_results_while_bad_ones_are_refused(
    load_backend_url: str, tmp_path: Path
) -> None:
    report = await run_load(load_backend_url, tmp_path, LoadSizes())
    # Shown by pytest when the test fails, whatever its capture settings.
    print(report.text())
    assert not report.problems, report.text()
    assert report.good_tasks == LoadSizes().plan().tasks, report.text()
    met = set(report.tally.by_code())
    assert met >= _MET, f"never met {_MET - met}\n{report.text()}"
    assert not met & {"UNKNOWN", "INTERNAL"}, report.text()
