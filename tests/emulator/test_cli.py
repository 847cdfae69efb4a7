"""`python -m gateway.emulator` runs standalone, says what it is, and stops on SIGTERM."""

from __future__ import annotations

import asyncio
import re
import sys

import aiohttp


async def test_standalone_emulator_serves_and_stops() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.emulator",
        "--port",
        "0",
        "--api-key",
        "cli-key",
        "--knobs",
        '{"faults": [{"kind": "unavailable", "count": 1}]}',
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=30)).decode()
        match = re.fullmatch(r"offline Gemini emulator \(not Gemini\) listening on (\S+)\n", line)
        assert match, line
        url = f"{match.group(1)}/v1beta/models/gemini-3.6-flash:generateContent"
        body = {"contents": [{"parts": [{"text": "hi"}]}]}
        async with aiohttp.ClientSession(headers={"x-goog-api-key": "cli-key"}) as session:
            statuses = []
            for _ in range(2):
                async with session.post(url, json=body) as response:
                    statuses.append(response.status)
        assert statuses == [503, 200]
    finally:
        if process.returncode is None:
            process.terminate()
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0
    assert b"offline Gemini emulator (not Gemini)" in stderr
