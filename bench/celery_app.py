"""The Celery application ``bench/end_to_end.py`` measures our grid against.

Its broker and result backend come from the command line (``celery -b URL
--result-backend URL``) in the worker, and from ``configure`` in the client.
"""

from __future__ import annotations

from celery import Celery

QUEUE = "gridpod-bench"

app = Celery("gridpod_bench")
app.conf.update(
    task_default_queue=QUEUE,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    # A broker that is not up yet is a failed run, not something to wait out.
    broker_connection_retry_on_startup=False,
)


@app.task(name="empty")  # type: ignore[misc, untyped-decorator, unused-ignore]
def empty() -> str:
    return "ok"


def configure(redis_url: str) -> tuple[str, str]:
    """Broker on database 0 of ``redis_url``, results on database 1: their URLs,
    for the worker's command line."""
    broker, backend = f"{redis_url}/0", f"{redis_url}/1"
    app.conf.update(broker_url=broker, result_backend=backend)
    return broker, backend
