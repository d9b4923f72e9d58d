"""Submitter.WatchResults streams of any requests against the control plane.

Each request is answered with the current status of each of its keys (NOTFOUND for
an unknown one), filtered by its fetch_statuses; a message that does not parse ends
the stream with INVALID_ARGUMENT; the client's half-close ends it with OK; a watch
changes nothing stored, and its stream is not counted once it ends.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import timedelta

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent._chunks import single
from agent.backend import Backend, NewTask
from agent.control import ControlPlaneConfig
from gridpod_api import objects_pb2, result_status_pb2, submitter_common_pb2
from tests.fuzz.support import (
    Plane,
    Sent,
    assert_nothing_left_over,
    encoded,
    examples,
    parsed,
    raw_bytes,
    serving_control_plane,
)

_Request = submitter_common_pb2.WatchResultRequest
_Reply = submitter_common_pb2.WatchResultStream
_WATCH_RESULTS = "/armonik.api.grpc.v1.submitter.Submitter/WatchResults"
_Status = result_status_pb2.ResultStatus
CONFIG = ControlPlaneConfig(max_streams_per_client=4)

# The results of the module's session, and their statuses.
KNOWN = {
    "completed": result_status_pb2.RESULT_STATUS_COMPLETED,
    "aborted": result_status_pb2.RESULT_STATUS_ABORTED,
    "created": result_status_pb2.RESULT_STATUS_CREATED,
}
_STATUSES = [*_Status.values(), 99, -1]


async def _results(backend: Backend) -> None:
    """A session with one result of each status."""
    session = await backend.create_session(objects_pb2.TaskOptions(), [])
    for key in ("completed", "aborted", "created"):
        payload = await backend.write_blob(single(b"payload"))
        await backend.submit_tasks(session.session_id, [NewTask(payload, [key])])
        if key == "created":
            continue
        attempt = await backend.acquire("fuzzing-agent", "", timedelta(seconds=60))
        assert attempt is not None
        if key == "completed":
            await backend.complete(attempt, {key: b"value"})
        else:
            await backend.fail(attempt, "no retries left")


@pytest.fixture(scope="module")
def plane() -> Iterator[Plane]:
    with serving_control_plane(CONFIG) as served:
        served.loop.run(_results(served.backend))
        yield served


def _watch(
    plane: Plane, messages: Sequence[Sent]
) -> tuple[grpc.StatusCode, list[_Reply]]:
    call: grpc.StreamStreamMultiCallable[bytes, _Reply] = plane.channel.stream_stream(
        _WATCH_RESULTS, request_serializer=None, response_deserializer=_Reply.FromString
    )
    replies: list[_Reply] = []
    try:
        for reply in call(encoded(m) for m in messages):
            replies.append(reply)
    except grpc.RpcError as error:
        return error.code(), replies
    return grpc.StatusCode.OK, replies


def expected(
    messages: Sequence[Sent],
) -> tuple[grpc.StatusCode, Counter[tuple[str, int]]]:
    """The status of the stream, and each (key, status) its replies report."""
    reported: Counter[tuple[str, int]] = Counter()
    for message in messages:
        request = parsed(message, _Request)
        if request is None:
            return grpc.StatusCode.INVALID_ARGUMENT, reported
        wanted = set(request.fetch_statuses)
        for key in dict.fromkeys(request.result_ids):
            status = KNOWN.get(key, result_status_pb2.RESULT_STATUS_NOTFOUND)
            if not wanted or status in wanted:
                reported[key, status] += 1
    return grpc.StatusCode.OK, reported


_requests = st.builds(
    lambda ids, fetch, watch: _Request(
        result_ids=ids, fetch_statuses=fetch, watch_statuses=watch
    ),
    st.lists(st.sampled_from([*KNOWN, "unknown", ""]), max_size=5),
    st.lists(st.sampled_from(_STATUSES), max_size=3),
    st.lists(st.sampled_from(_STATUSES), max_size=3),
)


@examples(120)
@given(messages=st.lists(st.one_of(_requests, raw_bytes()), max_size=6))
def test_any_requests_get_their_statuses(plane: Plane, messages: list[Sent]) -> None:
    before = plane.state.stored()
    code, replies = _watch(plane, messages)
    want_code, want_reported = expected(messages)
    assert code == want_code
    reported: Counter[tuple[str, int]] = Counter()
    for reply in replies:
        for key in reply.result_ids:
            reported[key, reply.status] += 1
    if code == grpc.StatusCode.OK:
        assert reported == want_reported
    else:
        # Cut short: the requests before the one that does not parse, at most.
        assert not reported - want_reported
    assert plane.state.stored() == before
    assert_nothing_left_over(plane.state.stored())
    # The stream is not counted any more: the next one is served.
    good = [_Request(result_ids=["completed"])]
    assert _watch(plane, good) == (
        grpc.StatusCode.OK,
        [_Reply(status=KNOWN["completed"], result_ids=["completed"])],
    )
