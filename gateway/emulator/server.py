"""The offline Gemini emulator's HTTP server (aiohttp). It is an emulator, not Gemini.

Routes (Gemini REST, as the google-genai SDK calls them):
- `POST /{version}/models/{model}:generateContent`
- `POST /{version}/models/{model}:streamGenerateContent?alt=sse` (without `alt=sse`: one JSON
  array, as Google serves it)
- `GET  /{version}/models/{model}` (`models.get`: a model's description, after the key check)
- the Batch API (`gateway.emulator.batches`): `POST /{version}/models/{model}:batchGenerateContent`,
  `GET /{version}/batches/{id}`, `POST /{version}/batches/{id}:cancel`, `GET /{version}/batches`

Admin routes (no API key; bind the emulator to loopback):
- `GET  /_emulator/stats`    request counters per model and outcome, recent requests
- `GET  /_emulator/knobs`    current knobs, with the live fault rules
- `POST /_emulator/knobs`    partial update, e.g. `{"latency_s": 0.2}` or `{"faults": [...]}`
- `POST /_emulator/faults`   append one fault rule (or a list of them)
- `POST /_emulator/reset`    counters cleared, knobs back to their start values
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from gateway.config import EmulatorSettings
from gateway.emulator import answer as answers
from gateway.emulator.batches import BatchBook
from gateway.emulator.knobs import FaultKind, FaultPlan, FaultRule, Knobs
from gateway.emulator.wire import (
    API_VERSIONS,
    MAX_REQUEST_BYTES,
    ApiError,
    GenerateRequest,
    error_body,
    error_info,
    parse_generate_request,
    quota_failure,
    retry_info,
)

log = logging.getLogger("gateway.emulator")

_BANNER = "offline Gemini emulator (not Gemini)"
_RECENT_REQUESTS = 64
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_METHODS = {"generateContent": False, "streamGenerateContent": True}
_BATCH_METHOD = "batchGenerateContent"

#: Outcome labels besides "ok" and the fault kinds.
OUTCOME_BAD_API_KEY = "bad_api_key"
OUTCOME_BAD_REQUEST = "bad_request"
OUTCOME_NOT_FOUND = "not_found"


@dataclass(slots=True)
class EmulatorStats:
    """What the emulator has served since start (or the last reset)."""

    #: model -> outcome ("ok", a fault kind, "bad_request", "bad_api_key", "not_found") -> count;
    #: a request is counted when its outcome is decided, before its answer is sent
    by_outcome: dict[str, dict[str, int]] = field(default_factory=dict)
    #: The last requests, oldest first: model, stream flag, parts, generation config, outcome.
    recent: list[dict[str, Any]] = field(default_factory=list)
    #: Every batch created (Batch API), oldest first: name, model, display name, lines, state.
    batches: list[dict[str, Any]] = field(default_factory=list)
    #: Batch API lines received (a batch's lines are not generate requests).
    batch_lines: int = 0

    @property
    def requests(self) -> int:
        """All generate requests, whatever their outcome."""
        return sum(sum(outcomes.values()) for outcomes in self.by_outcome.values())

    def count(self, model: str | None = None, outcome: str | None = None) -> int:
        """Requests for `model` (any model if None) that ended in `outcome` (any if None)."""
        return sum(
            n
            for m, outcomes in self.by_outcome.items()
            if model is None or m == model
            for o, n in outcomes.items()
            if outcome is None or o == outcome
        )

    def to_json(self) -> dict[str, Any]:
        """The `GET /_emulator/stats` body."""
        return {
            "emulator": _BANNER,
            "requests": self.requests,
            "by_model": {m: sum(o.values()) for m, o in self.by_outcome.items()},
            "by_outcome": self.by_outcome,
            "recent": self.recent,
            "batches": self.batches,
            "batch_lines": self.batch_lines,
        }


class EmulatorServer:
    """Handle on one running offline Gemini emulator (it is an emulator, not Gemini).

    Start it in the caller's event loop (`await start()`), point google-genai at `base_url` with
    `api_key`, and turn its knobs with `set_knobs` / `inject`; `stats()` tells what it served.
    Call its methods from that event loop's thread only (or use the admin routes).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str = "emulator-key",
        knobs: Knobs | None = None,
        latency_s: float | None = None,
        latency_jitter_s: float | None = None,
    ) -> None:
        """`latency_s` / `latency_jitter_s`, when given, override those fields of `knobs`."""
        self._host = host
        self._requested_port = port
        self._api_key = api_key
        overrides = {
            name: value
            for name, value in (("latency_s", latency_s), ("latency_jitter_s", latency_jitter_s))
            if value is not None
        }
        self._initial_knobs = Knobs.model_validate({**(knobs or Knobs()).model_dump(), **overrides})
        self._knobs = self._initial_knobs.model_copy(deep=True)
        self._plan = FaultPlan(self._knobs)
        self._by_outcome: dict[str, dict[str, int]] = {}
        self._recent: deque[dict[str, Any]] = deque(maxlen=_RECENT_REQUESTS)
        self._batches = BatchBook()
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    @classmethod
    def from_settings(cls, settings: EmulatorSettings) -> EmulatorServer:
        """An emulator configured from the gateway's `EmulatorSettings`."""
        return cls(
            host=settings.host,
            port=settings.port,
            api_key=settings.api_key,
            latency_s=settings.latency_s,
            latency_jitter_s=settings.latency_jitter_s,
        )

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Binds the port and starts serving in the running event loop."""
        if self._runner is not None:
            raise RuntimeError("the emulator is already running")
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.router.add_post("/{version}/models/{target}", self._generate)
        app.router.add_get("/{version}/models/{model}", self._get_model)
        app.router.add_get("/{version}/batches", self._list_batches)
        app.router.add_get("/{version}/batches/{batch}", self._get_batch)
        app.router.add_post("/{version}/batches/{target}", self._cancel_batch)
        app.router.add_get("/_emulator/stats", self._admin_stats)
        app.router.add_get("/_emulator/knobs", self._admin_get_knobs)
        app.router.add_post("/_emulator/knobs", self._admin_set_knobs)
        app.router.add_post("/_emulator/faults", self._admin_add_faults)
        app.router.add_post("/_emulator/reset", self._admin_reset)
        # Handler cancellation lets a "hang" end as soon as its client gives up.
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._requested_port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        log.info("%s listening on %s", _BANNER, self.base_url)

    async def stop(self) -> None:
        """Stops serving; requests still in flight are cancelled."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            log.info("%s stopped", _BANNER)

    async def __aenter__(self) -> EmulatorServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        """The bound TCP port (known once started)."""
        if self._port is None:
            raise RuntimeError("the emulator has not been started")
        return self._port

    @property
    def base_url(self) -> str:
        """What to give google-genai as `http_options.base_url`."""
        return f"http://{self._host}:{self.port}"

    @property
    def api_key(self) -> str:
        """The only API key the emulator accepts."""
        return self._api_key

    # -- knobs and counters ----------------------------------------------------------------

    @property
    def knobs(self) -> Knobs:
        """The current knobs, fault rules as they stand now (counted rules shrink as they fire)."""
        return self._knobs.model_copy(update={"faults": self._plan.rules}, deep=True)

    def set_api_key(self, api_key: str) -> None:
        """Accepts `api_key` from now on instead of the key it started with (a key revoked or
        re-enabled upstream, as the gateway sees it)."""
        self._api_key = api_key

    def set_knobs(self, knobs: Knobs | None = None, **changes: Any) -> Knobs:
        """Replaces the knobs with `knobs`, or updates only the named fields.

        Giving `faults` (or `seed`) restarts the fault plan from the new rules.
        """
        merged = (knobs or self._knobs).model_dump()
        merged.update(changes)
        new = Knobs.model_validate(merged)
        if knobs is not None or "faults" in changes or "seed" in changes:
            self._plan = FaultPlan(new)
        self._knobs = new
        log.info("%s knobs set: %s", _BANNER, self.knobs.model_dump_json())
        return self.knobs

    def inject(self, kind: FaultKind | str, *, count: int | None = 1, **options: Any) -> None:
        """Adds a fault rule, by default "the next request fails this way".

        `count=None` with `rate=0.3` fires at random instead; other options are `FaultRule`
        fields (`model`, `stream`, `code`, `message`, `retry_delay_s`, `block_reason`, `text`).
        """
        if options.get("rate") is not None:
            count = None
        rule = FaultRule.model_validate({"kind": kind, "count": count, **options})
        self._plan.add(rule)
        log.info("%s fault added: %s", _BANNER, rule.model_dump_json(exclude_none=True))

    def stats(self) -> EmulatorStats:
        """A snapshot of the counters."""
        return EmulatorStats(
            by_outcome={m: dict(o) for m, o in self._by_outcome.items()},
            recent=list(self._recent),
            batches=self._batches.summaries(),
            batch_lines=self._batches.lines,
        )

    def reset(self) -> None:
        """Counters cleared, knobs and fault rules back to what the emulator started with."""
        self._knobs = self._initial_knobs.model_copy(deep=True)
        self._plan = FaultPlan(self._knobs)
        self._by_outcome.clear()
        self._recent.clear()
        self._batches.clear()
        log.info("%s reset", _BANNER)

    def _count(self, model: str, outcome: str, summary: dict[str, Any]) -> None:
        per_model = self._by_outcome.setdefault(model, {})
        per_model[outcome] = per_model.get(outcome, 0) + 1
        self._recent.append({**summary, "outcome": outcome})
        log.debug("%s: %s %s -> %s", _BANNER, model, summary.get("method", ""), outcome)

    # -- the Gemini routes -----------------------------------------------------------------

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        # Each request is counted as soon as its outcome is decided (before any latency, hang or
        # stream), so a test that gave up on a slow answer still sees the request it made.
        version = request.match_info["version"]
        model, _, method = request.match_info["target"].partition(":")
        summary: dict[str, Any] = {"model": model, "method": method}
        if method == _BATCH_METHOD:
            return await self._create_batch(request, version, model)
        try:
            stream = _METHODS.get(method)
            if version not in API_VERSIONS or stream is None:
                self._count(model, OUTCOME_NOT_FOUND, summary)
                raise ApiError(404, f"Method {method!r} of API version {version!r} not found.")
            if (key_error := self._check_key(request)) is not None:
                self._count(model, OUTCOME_BAD_API_KEY, summary)
                raise key_error
            parsed, body = await self._read(request, version, model, stream, summary)
            summary = {**parsed.summary(), "method": method}
            fault = self._plan.draw(model, stream)
            self._count(model, fault.kind.value if fault else "ok", summary)

            knobs = self._knobs
            delay = knobs.latency_s + self._plan.jitter(knobs.latency_jitter_s)
            if delay > 0:
                await asyncio.sleep(delay)
            sse = request.query.get("alt") == "sse"
            return await self._answer(request, parsed, body, fault, sse=sse)
        except ApiError as exc:
            return _json_response(exc.body(), status=exc.code)

    async def _get_model(self, request: web.Request) -> web.Response:
        # `models.get`: what the gateway's health probe asks to learn whether its key is
        # accepted. Not counted in the stats, which count generate requests.
        version, model = request.match_info["version"], request.match_info["model"]
        try:
            if version not in API_VERSIONS:
                raise ApiError(404, f"API version {version!r} not found.")
            if (key_error := self._check_key(request)) is not None:
                raise key_error
            if not model.startswith("gemini-"):
                raise ApiError(404, f"models/{model} is not found for API version {version}.")
        except ApiError as exc:
            return _json_response(exc.body(), status=exc.code)
        return _json_response(
            {
                "name": f"models/{model}",
                "displayName": f"{model} ({_BANNER})",
                "supportedGenerationMethods": list(_METHODS),
            }
        )

    # -- the Batch API (gateway.emulator.batches) ---------------------------------------------

    async def _create_batch(self, request: web.Request, version: str, model: str) -> web.Response:
        try:
            self._check_batch_route(request, version)
            if not model.startswith("gemini-"):
                raise ApiError(404, f"models/{model} is not found for API version {version}.")
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise ApiError(
                    400, f"Request payload size exceeds the limit: {MAX_REQUEST_BYTES} bytes."
                ) from None
            operation = self._batches.create(version, model, body, self._knobs)
        except ApiError as exc:
            return _json_response(exc.body(), status=exc.code)
        log.info("%s: batch %s of %s", _BANNER, operation["name"], model)
        return _json_response(operation)

    async def _get_batch(self, request: web.Request) -> web.Response:
        try:
            self._check_batch_route(request, request.match_info["version"])
            name = "batches/" + request.match_info["batch"]
            operation = self._batches.get(name, self._knobs)
        except ApiError as exc:
            return _json_response(exc.body(), status=exc.code)
        return _json_response(operation)

    async def _cancel_batch(self, request: web.Request) -> web.Response:
        batch, _, method = request.match_info["target"].partition(":")
        try:
            self._check_batch_route(request, request.match_info["version"])
            if method != "cancel":
                raise ApiError(404, f"Method {method!r} of batches not found.")
            self._batches.cancel("batches/" + batch)
        except ApiError as exc:
            return _json_response(exc.body(), status=exc.code)
        return _json_response({})

    async def _list_batches(self, request: web.Request) -> web.Response:
        try:
            self._check_batch_route(request, request.match_info["version"])
            try:
                size = int(request.query.get("pageSize", "0"))
            except ValueError:
                raise ApiError(400, "Invalid value at 'page_size' (TYPE_INT32).") from None
            page = self._batches.page(size, request.query.get("pageToken", ""), self._knobs)
        except ApiError as exc:
            return _json_response(exc.body(), status=exc.code)
        return _json_response(page)

    def _check_batch_route(self, request: web.Request, version: str) -> None:
        """Raises the `ApiError` of a Batch API call with an unknown version or a bad key."""
        if version not in API_VERSIONS:
            raise ApiError(404, f"API version {version!r} not found.")
        if (key_error := self._check_key(request)) is not None:
            raise key_error

    async def _read(
        self,
        request: web.Request,
        version: str,
        model: str,
        stream: bool,
        summary: dict[str, Any],
    ) -> tuple[GenerateRequest, bytes]:
        """The validated request and its raw body; counts and raises `ApiError` when invalid."""
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            self._count(model, OUTCOME_BAD_REQUEST, summary)
            raise ApiError(
                400, f"Request payload size exceeds the limit: {MAX_REQUEST_BYTES} bytes."
            ) from None
        if not model.startswith("gemini-"):
            self._count(model, OUTCOME_NOT_FOUND, summary)
            raise ApiError(
                404,
                f"models/{model} is not found for API version {version}, or is not supported "
                "for generateContent. Call ListModels to see the list of available models and "
                "their supported methods.",
            )
        try:
            return parse_generate_request(version, model, stream, body), body
        except ApiError:
            self._count(model, OUTCOME_BAD_REQUEST, summary)
            raise

    def _check_key(self, request: web.Request) -> ApiError | None:
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not key:
            return ApiError(
                403,
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to call "
                "this API.",
            )
        if key != self._api_key:
            # Google answers a wrong key with 400 INVALID_ARGUMENT and reason API_KEY_INVALID.
            return ApiError(
                400,
                "API key not valid. Please pass a valid API key.",
                details=[
                    error_info("API_KEY_INVALID", {"service": "generativelanguage.googleapis.com"})
                ],
            )
        return None

    async def _answer(
        self,
        request: web.Request,
        parsed: GenerateRequest,
        body: bytes,
        fault: FaultRule | None,
        *,
        sse: bool,
    ) -> web.StreamResponse:
        kind = fault.kind if fault is not None else None
        if fault is not None and (error := _fault_error(fault, parsed.model)) is not None:
            raise error
        if kind is FaultKind.DISCONNECT:
            _drop_connection(request)
            return web.Response(status=500)  # never reaches the client
        if kind is FaultKind.HANG:
            await asyncio.sleep(self._knobs.hang_s)
            raise ApiError(504, "Deadline expired before operation could complete.")

        seed = answers.request_seed(parsed.model, body)
        if kind is FaultKind.PROMPT_BLOCKED:
            assert fault is not None
            result = answers.blocked(parsed, seed, fault.block_reason)
        elif kind in (FaultKind.SAFETY, FaultKind.IMAGE_SAFETY):
            assert kind is not None
            result = answers.refused(parsed, seed, kind.value.upper())
        else:
            plan = answers.image_plan(parsed, seed)
            images = [await asyncio.to_thread(answers.render_image, plan)] if plan else []
            result = answers.synthesize(
                parsed,
                seed,
                image_bytes=images,
                invalid=kind is FaultKind.INVALID_ANSWER,
                scripted=fault.text if fault is not None else None,
            )

        if not parsed.stream:
            payload = json.dumps(result.body()).encode()
            if kind is FaultKind.MALFORMED:
                return _json_bytes(payload[: len(payload) // 2])
            if kind is FaultKind.MIDSTREAM:
                return await _truncated_body(request, payload)
            return _json_bytes(payload)
        chunks = result.chunks(self._knobs.stream_chunk_chars)
        if not sse:
            return _json_response(chunks)
        return await self._stream(request, chunks, kind)

    async def _stream(
        self, request: web.Request, chunks: list[dict[str, Any]], kind: FaultKind | None
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers=_SSE_HEADERS)
        await response.prepare(request)
        for index, chunk in enumerate(chunks):
            if index and self._knobs.stream_chunk_delay_s:
                await asyncio.sleep(self._knobs.stream_chunk_delay_s)
            data = json.dumps(chunk).encode()
            if kind is FaultKind.MALFORMED:
                data = data[: len(data) // 2]
            await response.write(b"data: " + data + b"\r\n\r\n")
            if kind is FaultKind.MIDSTREAM:
                error = error_body(503, "The model is overloaded. Please try again later.")
                await response.write(b"data: " + json.dumps(error).encode() + b"\r\n\r\n")
                break
        await response.write_eof()
        return response

    # -- admin routes ----------------------------------------------------------------------

    async def _admin_stats(self, request: web.Request) -> web.Response:
        return _json_response(self.stats().to_json())

    async def _admin_get_knobs(self, request: web.Request) -> web.Response:
        return _json_response(self.knobs.model_dump(mode="json"))

    async def _admin_set_knobs(self, request: web.Request) -> web.Response:
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise ValueError("expected a JSON object of knob values")
            knobs = self.set_knobs(**changes)
        except (ValueError, ValidationError) as exc:
            return _json_response(error_body(400, f"bad knobs: {exc}"), status=400)
        return _json_response(knobs.model_dump(mode="json"))

    async def _admin_add_faults(self, request: web.Request) -> web.Response:
        try:
            raw = await request.json()
            rules = [FaultRule.model_validate(r) for r in (raw if isinstance(raw, list) else [raw])]
        except (ValueError, ValidationError) as exc:
            return _json_response(error_body(400, f"bad fault rule: {exc}"), status=400)
        for rule in rules:
            self._plan.add(rule)
        log.info("%s faults added: %d", _BANNER, len(rules))
        return _json_response(self.knobs.model_dump(mode="json"))

    async def _admin_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return _json_response(self.knobs.model_dump(mode="json"))


def _fault_error(fault: FaultRule, model: str) -> ApiError | None:
    """The HTTP error a fault rule answers with, or None for faults shaped otherwise."""
    if fault.kind is FaultKind.RATE_LIMITED:
        return ApiError(
            429,
            "You exceeded your current quota, please check your plan and billing details. "
            "(offline Gemini emulator: injected fault)",
            details=[quota_failure(model), retry_info(fault.retry_delay_s)],
        )
    if fault.kind is FaultKind.UNAVAILABLE:
        return ApiError(503, "The model is overloaded. Please try again later.")
    if fault.kind is FaultKind.INTERNAL:
        return ApiError(
            500,
            "An internal error has occurred. Please retry or report in "
            "https://developers.generativeai.google/guide/troubleshooting",
        )
    if fault.kind is FaultKind.ERROR:
        assert fault.code is not None
        message = fault.message or f"Injected HTTP {fault.code} (offline Gemini emulator)."
        return ApiError(fault.code, message)
    return None


def _json_bytes(payload: bytes, status: int = 200) -> web.Response:
    return web.Response(body=payload, status=status, content_type="application/json")


def _json_response(value: Any, status: int = 200) -> web.Response:
    return _json_bytes(json.dumps(value).encode(), status)


def _drop_connection(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


async def _truncated_body(request: web.Request, payload: bytes) -> web.StreamResponse:
    """Announces the full length, sends half, then drops the connection."""
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    response.content_length = len(payload)
    await response.prepare(request)
    await response.write(payload[: len(payload) // 2])
    _drop_connection(request)
    return response
