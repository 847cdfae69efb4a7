"""The emulator's Batch API through the real google-genai SDK over HTTP: create with inline
requests, states PENDING -> RUNNING -> an end, lines answered exactly as generateContent
answers, failed lines, hold, cancel, list, and the requests it refuses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from gateway.emulator import EmulatorServer

MODEL = "gemini-3.6-flash"
SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "score": {"type": "integer"}},
    "required": ["title", "score"],
}


@pytest.fixture
async def client(emulator: EmulatorServer) -> AsyncIterator[genai.Client]:
    sdk = genai.Client(
        api_key=emulator.api_key,
        http_options=types.HttpOptions(base_url=emulator.base_url, api_version="v1beta"),
    )
    try:
        yield sdk
    finally:
        await sdk.aio.aclose()


def request(n: int) -> tuple[types.Content, types.GenerateContentConfig]:
    """A schema-constrained request with a system instruction and a video by URL."""
    contents = types.Content(
        role="user",
        parts=[
            types.Part(file_data=types.FileData(file_uri=f"https://youtu.be/video{n:05d}")),
            types.Part(text=f"Title ideas for video {n}"),
        ],
    )
    config = types.GenerateContentConfig(
        system_instruction="Answer in JSON.",
        response_mime_type="application/json",
        response_json_schema=SCHEMA,
    )
    return contents, config


async def create(client: genai.Client, lines: int, name: str = "batch") -> types.BatchJob:
    inlined = []
    for n in range(lines):
        contents, config = request(n)
        inlined.append(
            types.InlinedRequest(contents=contents, config=config, metadata={"key": f"job-{n}"})
        )
    return await client.aio.batches.create(
        model=MODEL, src=inlined, config=types.CreateBatchJobConfig(display_name=name)
    )


async def states(client: genai.Client, name: str, reads: int) -> list[Any]:
    return [(await client.aio.batches.get(name=name)).state for _ in range(reads)]


async def test_a_batch_moves_through_its_states_and_answers_like_generate_content(
    emulator: EmulatorServer, client: genai.Client
) -> None:
    created = await create(client, 3, "three lines")
    assert created.name is not None

    seen = await states(client, created.name, 3)
    done = await client.aio.batches.get(name=created.name)

    assert (created.state, created.display_name) == (
        types.JobState.JOB_STATE_PENDING,
        "three lines",
    )
    assert seen == [
        types.JobState.JOB_STATE_RUNNING,
        types.JobState.JOB_STATE_SUCCEEDED,
        types.JobState.JOB_STATE_SUCCEEDED,
    ]
    assert done.dest is not None and done.dest.inlined_responses is not None
    lines = done.dest.inlined_responses
    assert [line.metadata for line in lines] == [{"key": f"job-{n}"} for n in range(3)]
    for n, line in enumerate(lines):
        contents, config = request(n)
        alone = await client.aio.models.generate_content(
            model=MODEL, contents=contents, config=config
        )
        assert line.error is None and line.response is not None
        assert line.response.text == alone.text
        assert line.response.usage_metadata == alone.usage_metadata
    stats = emulator.stats()
    assert stats.batch_lines == 3 and stats.count() == 3  # the three generateContent calls
    assert [(b["lines"], b["state"]) for b in stats.batches] == [(3, "BATCH_STATE_SUCCEEDED")]


async def test_failed_lines_report_an_error_instead_of_a_response(
    emulator: EmulatorServer, client: genai.Client
) -> None:
    emulator.set_knobs(batch_fail_lines=[1, 7], batch_fail_code=3)
    created = await create(client, 3)
    emulator.set_knobs(batch_fail_lines=[])  # fixed when the batch was created
    assert created.name is not None
    await states(client, created.name, 2)
    done = await client.aio.batches.get(name=created.name)

    assert done.dest is not None and done.dest.inlined_responses is not None
    failed = done.dest.inlined_responses[1]
    assert failed.response is None and failed.error is not None
    assert failed.error.code == 3 and "injected" in (failed.error.message or "")
    assert failed.metadata == {"key": "job-1"}
    assert [line.response is not None for line in done.dest.inlined_responses] == [
        True,
        False,
        True,
    ]


async def test_hold_and_time_knobs_keep_a_batch_where_it_is(
    emulator: EmulatorServer, client: genai.Client
) -> None:
    emulator.set_knobs(batch_hold=True)
    held = await create(client, 1)
    assert held.name is not None
    assert await states(client, held.name, 3) == [types.JobState.JOB_STATE_RUNNING] * 3
    emulator.set_knobs(batch_hold=False)
    assert await states(client, held.name, 1) == [types.JobState.JOB_STATE_SUCCEEDED]

    emulator.set_knobs(batch_pending_s=3600.0)
    waiting = await create(client, 1)
    assert waiting.name is not None
    assert await states(client, waiting.name, 2) == [types.JobState.JOB_STATE_PENDING] * 2


@pytest.mark.parametrize(
    ("outcome", "state"),
    [("failed", types.JobState.JOB_STATE_FAILED), ("expired", types.JobState.JOB_STATE_EXPIRED)],
)
async def test_a_batch_may_end_failed_or_expired_without_lines(
    emulator: EmulatorServer, client: genai.Client, outcome: str, state: types.JobState
) -> None:
    emulator.set_knobs(batch_outcome=outcome)
    created = await create(client, 2)
    assert created.name is not None
    await states(client, created.name, 2)
    done = await client.aio.batches.get(name=created.name)

    assert done.state == state
    assert done.dest is None or not done.dest.inlined_responses


async def test_cancel_ends_a_pending_or_running_batch_and_nothing_else(
    emulator: EmulatorServer, client: genai.Client
) -> None:
    pending = await create(client, 1)
    finished = await create(client, 1)
    assert pending.name is not None and finished.name is not None
    await states(client, finished.name, 2)

    await client.aio.batches.cancel(name=pending.name)
    await client.aio.batches.cancel(name=finished.name)

    assert await states(client, pending.name, 2) == [types.JobState.JOB_STATE_CANCELLED] * 2
    cancelled = await client.aio.batches.get(name=pending.name)
    assert cancelled.dest is None or not cancelled.dest.inlined_responses
    assert await states(client, finished.name, 1) == [types.JobState.JOB_STATE_SUCCEEDED]
    with pytest.raises(genai_errors.ClientError) as unknown:
        await client.aio.batches.get(name="batches/nothing-here")
    assert unknown.value.code == 404


async def test_list_pages_through_every_batch_oldest_first(
    emulator: EmulatorServer, client: genai.Client
) -> None:
    for name in ("first", "second", "third"):
        await create(client, 1, name)

    pager = await client.aio.batches.list(config=types.ListBatchJobsConfig(page_size=2))
    names = [job.display_name async for job in pager]

    assert names == ["first", "second", "third"]
    emulator.reset()
    assert emulator.stats().batches == [] and emulator.stats().batch_lines == 0


async def test_bad_batches_are_refused_like_bad_requests(
    emulator: EmulatorServer, client: genai.Client
) -> None:
    bad_line = types.InlinedRequest(
        contents=types.Content(role="user", parts=[types.Part(text="hi")]),
        config=types.GenerateContentConfig(response_modalities=["IMAGE"]),
    )
    with pytest.raises(genai_errors.ClientError) as refused:
        await client.aio.batches.create(model=MODEL, src=[bad_line])
    assert refused.value.code == 400 and "requests[0]" in (refused.value.message or "")

    wrong_key = genai.Client(
        api_key="not-the-key",
        http_options=types.HttpOptions(base_url=emulator.base_url, api_version="v1beta"),
    )
    with pytest.raises(genai_errors.ClientError) as denied:
        await create(wrong_key, 1)
    await wrong_key.aio.aclose()
    assert denied.value.code == 400 and denied.value.status == "INVALID_ARGUMENT"
    assert emulator.stats().batches == []
