"""The Gemini adapter: the only module that imports google-genai.

`GeminiClient` implements `gateway.model.ModelClient` on top of `google.genai.Client`:

- Client: API key, pinned `api_version`, optional base URL (the offline emulator in tests and
  demo mode). The SDK's own retries are switched off (one attempt, no implicit reconnects,
  no automatic stream continuation); the policy below is the only one.
- Retries: 429, 408, 500, 502, 503, 504, timeouts, connection errors and unreadable bodies,
  up to `GeminiSettings.max_attempts`, with exponential backoff and full jitter, never sooner
  than Google's `RetryInfo.retryDelay`. 400/401/403/404 and safety blocks are final. A
  `retryDelay` longer than `retry_delay_max_s`, or one that does not fit before the deadline,
  is not slept: the call ends at once with the upstream error, that delay its retry-after.
- Deadlines: `deadline` is an absolute `time.monotonic()` instant. Each attempt gets the time
  that is left (capped by `attempt_timeout_s`) as its timeout; no attempt starts, and no
  backoff sleeps, past the deadline. A timed-out attempt is cancelled, which closes its
  connection, so Google stops working on it too.
- Errors: SDK and transport failures become `gateway.errors` domain errors with sanitized
  messages (no API key, no raw upstream body; tracebacks do not chain the SDK exception).
- Credentials: a refused API key (401/403, or reason API_KEY_INVALID) is the operator's
  problem, not the caller's: callers get `UpstreamCredentialsRefused` (UNAVAILABLE, no upstream
  text), the refusal is logged at ERROR at most once per `credentials_check_interval_s`, and
  listeners (the health service) hear of every change; `check_credentials` asks Gemini
  (`models.get`) without waiting for traffic.
- Usage: every attempt, failed or not, is handed to the `UsageSink` as a `UsageRecord` with its
  tokens by kind and cost (`gateway.usage.PriceBook`), to the caller's `on_attempt`, and
  becomes the attempt's span (`gateway.telemetry.tracing.upstream_attempt`).
- Batch API (`gateway.model.BatchClient`): create a batch of inline requests, get it (its
  lines read by the same rules as interactive answers, priced at batch prices), cancel it,
  find it by display name. One attempt per call: the batcher (`gateway.jobs.batcher`) polls
  and tries again; who the lines are for, and so their usage records, are its business.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import urllib.parse
import urllib.request
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pydantic
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from gateway import backoff
from gateway.config import GeminiSettings
from gateway.errors import (
    DeadlineExceeded,
    GatewayError,
    Internal,
    SafetyBlocked,
    UpstreamBadResponse,
    UpstreamCredentialsRefused,
    UpstreamError,
    UpstreamRejected,
    UpstreamUnavailable,
)
from gateway.model import (
    AttemptCallback,
    AttemptGate,
    BatchLine,
    BatchState,
    BatchStatus,
    Blob,
    CallLabels,
    ModelRequest,
    ModelResponse,
    TextCallback,
    Usage,
    UsageRecord,
    UsageSink,
)
from gateway.telemetry import tracing
from gateway.usage import PriceBook

log = logging.getLogger(__name__)

RETRYABLE_HTTP_STATUS = frozenset({408, 429, 500, 502, 503, 504})
#: Candidate finish reasons that mean "refused on content grounds" rather than "done".
SAFETY_FINISH_REASONS = frozenset(
    {
        "SAFETY",
        "IMAGE_SAFETY",
        "PROHIBITED_CONTENT",
        "IMAGE_PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
        "RECITATION",
        "IMAGE_RECITATION",
    }
)
_MAX_UPSTREAM_MESSAGE = 300


#: Where google-genai sends requests when no base URL is configured.
_DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com/"


def _proxy_for(url: str) -> str | None:
    """The proxy the environment (HTTPS_PROXY, NO_PROXY...) sets for `url`, if any."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme or "https")


class GeminiClient:
    """Answers `ModelRequest`s with Gemini (or the offline emulator) through google-genai."""

    def __init__(
        self,
        settings: GeminiSettings,
        *,
        usage_sink: UsageSink,
        rng: random.Random | None = None,
        batch_price_factor: float = 0.5,
    ) -> None:
        """`batch_price_factor`: what a Batch API answer costs as a fraction of its interactive
        price (`BatchSettings.price_factor`)."""
        if settings.api_key is None or not settings.api_key.get_secret_value():
            raise ValueError("GeminiSettings.api_key is required (VIEWBAIT_GEMINI__API_KEY)")
        self._settings = settings
        self._api_key = settings.api_key.get_secret_value()
        self._sink = usage_sink
        self._prices = PriceBook(settings.prices, batch_factor=batch_price_factor)
        self._rng = rng or random.Random()
        self._configs = _ConfigCache()
        # Built on first use, inside the event loop that will use its HTTP session.
        self._client: genai.Client | None = None
        self._session: aiohttp.ClientSession | None = None
        #: Whether Gemini refused the key on the last call or check that got an answer.
        self.credentials_refused = False
        self._credentials_listeners: list[Callable[[bool], None]] = []
        self._refusal_logged_at: float | None = None

    def _sdk(self) -> genai.Client:
        """The SDK client, created with its HTTP session on first use.

        The session is ours rather than the SDK's default so that proxy settings are read from
        the environment once: with `trust_env=True` aiohttp re-reads proxies and `~/.netrc` in a
        worker thread on every request, a measurable share of the gateway's CPU.
        """
        if self._client is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                trust_env=False,
                proxy=_proxy_for(self._settings.base_url or _DEFAULT_BASE_URL),
            )
            self._client = genai.Client(
                vertexai=False,
                api_key=self._api_key,
                http_options=types.HttpOptions(
                    base_url=self._settings.base_url or None,
                    api_version=self._settings.api_version,
                    # One attempt per SDK call: with retry_options set, the SDK also stops its
                    # implicit reconnect-and-retry on connection errors. Retries are ours.
                    retry_options=types.HttpRetryOptions(attempts=1),
                    aiohttp_client=self._session,
                ),
            )
        return self._client

    def _models(self) -> Any:
        """The SDK's async models API."""
        return self._sdk().aio.models

    def prepare(self) -> None:
        """Builds the SDK client now, in the running event loop: building it takes a few
        hundred milliseconds of CPU, which the first request (and every lease heartbeat due
        meanwhile) would otherwise wait for."""
        self._models()

    async def aclose(self) -> None:
        """Closes the HTTP sessions of the underlying SDK client."""
        if self._client is not None:
            await self._client.aio.aclose()
            self._client.close()
            self._client = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def add_credentials_listener(self, listener: Callable[[bool], None]) -> None:
        """Calls `listener(refused)` whenever Gemini starts or stops refusing the API key."""
        self._credentials_listeners.append(listener)

    def _credentials_answered(self, refused: bool, why: str = "") -> None:
        if refused:
            now = time.monotonic()
            interval = self._settings.credentials_check_interval_s
            if self._refusal_logged_at is None or now - self._refusal_logged_at >= interval:
                self._refusal_logged_at = now
                log.error(
                    "Gemini refuses the gateway's credentials (%s): every model call fails "
                    "until an operator fixes VIEWBAIT_GEMINI__API_KEY",
                    why,
                )
        elif self.credentials_refused:
            self._refusal_logged_at = None
            log.warning("Gemini accepts the gateway's credentials again")
        if refused != self.credentials_refused:
            self.credentials_refused = refused
            for listener in self._credentials_listeners:
                listener(refused)

    async def check_credentials(self) -> bool | None:
        """Asks Gemini whether it accepts the API key (`models.get` of the text model, bounded
        by `attempt_timeout_s`): True accepted, False refused, None no answer (unreachable,
        overloaded: says nothing about the key). Listeners hear of a change."""
        try:
            async with asyncio.timeout(self._settings.attempt_timeout_s):
                await self._models().get(model=self._settings.text_model)
        except genai_errors.APIError as exc:
            if not _refuses_credentials(exc):
                return None
            self._credentials_answered(True, f"{exc.code} {exc.status}")
            return False
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
            return None
        self._credentials_answered(False)
        return True

    async def __aenter__(self) -> GeminiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def generate(
        self,
        request: ModelRequest,
        *,
        labels: CallLabels,
        deadline: float | None = None,
        on_text: TextCallback | None = None,
        before_attempt: AttemptGate | None = None,
        on_attempt: AttemptCallback | None = None,
    ) -> ModelResponse:
        """Runs `request` with retries until it succeeds, fails for good, or the deadline comes.

        With `on_text` the answer is streamed (`generate_content_stream`) and every text chunk
        is passed on as it arrives. If an attempt fails mid-stream and is retried, the retry
        streams again from its beginning: treat chunks as progress, `ModelResponse.text` as
        the answer.

        `before_attempt(n)` runs before attempt n (the rate limits charge every attempt). If it
        refuses a retry, the call ends with the failure it would have retried: the upstream
        error, its retry-after at least the gate's, so a caller backs off as long as both ask.
        `on_attempt(record)` hears of every attempt made, with the record the usage sink gets.
        """
        contents = _contents(request)
        config = self._configs.get(request)
        attempt = 0
        failure: _Failure | None = None
        while True:
            attempt += 1
            timeout, capped_by_deadline = self._attempt_timeout(deadline)
            if timeout <= 0:
                raise DeadlineExceeded(
                    f"the deadline passed before Gemini could be asked (attempt {attempt})"
                )
            if before_attempt is not None:
                try:
                    await before_attempt(attempt)
                except GatewayError as refused:
                    if failure is None:
                        raise
                    raise self._refused_retry(failure, attempt - 1, refused) from None
            started = time.monotonic()
            try:
                # The one per-attempt timeout: asyncio cancels the request, which closes the
                # connection, which tells Google to stop. (Passing it to the SDK as well would
                # add its X-Server-Timeout header at the price of re-merging HTTP options on
                # every call.)
                async with asyncio.timeout(timeout):
                    answer = await self._attempt(request.model, contents, config, on_text)
                response = answer.to_response(request.model, prices=self._prices, attempts=attempt)
            except _CallbackFailed as failed:
                await self._record(
                    labels, request.model, attempt, "CALLBACK_FAILED", started, on_attempt
                )
                raise failed.original from None
            except asyncio.CancelledError:
                await self._record(labels, request.model, attempt, "CANCELLED", started, on_attempt)
                raise
            except Exception as exc:  # every failure is classified: retry, or a domain error
                failure = self._classify(exc, request.model, capped_by_deadline)
                usage = failure.usage
                await self._record(
                    labels,
                    request.model,
                    attempt,
                    failure.error.reason,
                    started,
                    on_attempt,
                    usage=usage,
                    cost=self._prices.cost_usd(request.model, usage) if usage else 0.0,
                )
                delay, why_not = self._retry_delay(failure, attempt, deadline)
                if delay is None:
                    raise self._final_error(failure, why_not) from None
                log.warning(
                    "Gemini attempt %d/%d (%s, model %s) failed: %s; retrying in %.2fs",
                    attempt,
                    self._settings.max_attempts,
                    labels.operation,
                    request.model,
                    failure.error.message,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            if self.credentials_refused:
                self._credentials_answered(False)
            await self._record(
                labels,
                request.model,
                attempt,
                "ok",
                started,
                on_attempt,
                usage=response.usage,
                cost=response.cost_usd,
            )
            return response

    # -- one attempt -------------------------------------------------------------------------

    async def _attempt(
        self,
        model: str,
        contents: types.Content,
        config: types.GenerateContentConfig,
        on_text: TextCallback | None,
    ) -> _Answer:
        models = self._models()
        if on_text is None:
            response = await models.generate_content(model=model, contents=contents, config=config)
            return _Answer.fold([response])
        answer = _Answer()
        stream = await models.generate_content_stream(model=model, contents=contents, config=config)
        try:
            async for chunk in stream:
                text = answer.add(chunk)
                if text:
                    try:
                        await on_text(text)
                    except Exception as exc:
                        raise _CallbackFailed(exc) from exc
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        return answer

    def _attempt_timeout(self, deadline: float | None) -> tuple[float, bool]:
        cap = self._settings.attempt_timeout_s
        if deadline is None:
            return cap, False
        remaining = deadline - time.monotonic()
        return (remaining, True) if remaining <= cap else (cap, False)

    # -- failures ----------------------------------------------------------------------------

    def _classify(self, exc: Exception, model: str, capped_by_deadline: bool) -> _Failure:
        """What a failed attempt means: the domain error, and whether another attempt may help."""
        if isinstance(exc, _BadAnswer):
            return _Failure(exc.error, retryable=exc.retryable, usage=exc.usage)
        if isinstance(exc, genai_errors.APIError):
            return self._classify_api_error(exc, model)
        if isinstance(exc, TimeoutError):
            if capped_by_deadline:
                return _Failure(
                    DeadlineExceeded("the deadline passed while waiting for Gemini"),
                    retryable=False,
                )
            return _Failure(
                UpstreamUnavailable(
                    f"Gemini did not answer within {self._settings.attempt_timeout_s:g}s"
                ),
                retryable=True,
            )
        if isinstance(exc, aiohttp.ClientError | OSError):
            return _Failure(
                UpstreamUnavailable(f"could not reach Gemini ({type(exc).__name__})"),
                retryable=True,
            )
        unreadable = (
            json.JSONDecodeError,
            genai_errors.UnknownApiResponseError,
            pydantic.ValidationError,
        )
        if isinstance(exc, unreadable):
            return _Failure(
                UpstreamBadResponse("Gemini sent a response the gateway could not read"),
                retryable=True,
            )
        log.exception("unexpected failure calling Gemini (model %s)", model)
        return _Failure(Internal("unexpected failure while calling Gemini"), retryable=False)

    def _classify_api_error(self, exc: genai_errors.APIError, model: str) -> _Failure:
        code = exc.code or 0
        status = exc.status or "UNKNOWN"
        body = exc.details if isinstance(exc.details, Mapping) else {}
        error = body.get("error", body)
        details = error.get("details") if isinstance(error, Mapping) else None
        details = details if isinstance(details, list) else []
        if code in RETRYABLE_HTTP_STATUS:
            server_delay = backoff.retry_delay_from_details(details)
            what = "rate-limited the gateway" if code == 429 else "failed"
            return _Failure(
                UpstreamUnavailable(f"Gemini {what} ({code} {status})", retry_after_s=server_delay),
                retryable=True,
                server_delay_s=server_delay,
            )
        if _refuses_credentials(exc):
            # The caller can do nothing about the gateway's key: no upstream text, no setting
            # names; the operator learns the details from the ERROR log and the health service.
            self._credentials_answered(True, f"{code} {status}")
            refused = UpstreamCredentialsRefused(
                "the AI provider is refusing this gateway's credentials; its operators have "
                "been alerted; retry later",
                retry_after_s=self._settings.credentials_check_interval_s,
            )
            return _Failure(refused, retryable=False)
        # Gemini's own text and the settings to check are for the operator (the log): the
        # caller reads only what happened, and quotes the request id.
        upstream = self._sanitize(exc.message)
        if code == 404:
            log.error(
                "Gemini does not serve model %r for this API version (%s %s): check the "
                "configured model names (gemini.*_model): %s",
                model,
                code,
                status,
                upstream,
            )
            message = (
                f"the AI provider does not serve the model this operation runs on ({code} "
                f"{status}); its operators have been alerted"
            )
        else:
            log.warning("Gemini rejected a request (%s %s): %s", code, status, upstream)
            message = f"Gemini rejected the request ({code} {status})"
        if 400 <= code < 500:
            return _Failure(UpstreamRejected(message), retryable=False)
        return _Failure(UpstreamUnavailable(message), retryable=False)

    def _retry_delay(
        self, failure: _Failure, attempt: int, deadline: float | None
    ) -> tuple[float | None, str]:
        """Seconds to wait before the next attempt, or None to stop now, with why not."""
        settings = self._settings
        if not failure.retryable:
            return None, ""
        if attempt >= settings.max_attempts:
            return None, f"after {attempt} attempts"
        asked = failure.server_delay_s
        if asked is not None and asked > settings.retry_delay_max_s:
            # Sleeping that long would hold the caller (or a job worker) for nothing: the
            # caller hears at once when to come back.
            return None, f"after {attempt} attempt(s); Gemini asks to wait {asked:g}s"
        delay = backoff.next_delay(
            attempt,
            initial_s=settings.backoff_initial_s,
            max_s=settings.backoff_max_s,
            server_delay_s=asked,
            rng=self._rng,
        )
        if deadline is not None and time.monotonic() + delay >= deadline:
            return None, f"after {attempt} attempt(s); the deadline leaves no time for another"
        return delay, ""

    def _refused_retry(
        self, failure: _Failure, attempts: int, refused: GatewayError
    ) -> GatewayError:
        """The error of a call whose retry `before_attempt` refused (a rate limit): the last
        upstream failure, told why it was not retried, and not to come back sooner than either
        the upstream or the gate asks."""
        error = failure.error
        waits = [s for s in (error.retry_after_s, refused.retry_after_s) if s is not None]
        final = type(error)(
            f"{error.message}, after {attempts} attempt(s); not retried now: {refused.message}",
            retry_after_s=max(waits) if waits else None,
        )
        final.metadata.update(error.metadata)
        final.metadata["retry_refused_by"] = refused.reason
        return final

    def _final_error(self, failure: _Failure, why: str) -> GatewayError:
        error = failure.error
        if not failure.retryable:
            return error
        final = type(error)(f"{error.message}, {why}", retry_after_s=error.retry_after_s)
        final.metadata.update(error.metadata)
        return final

    def _sanitize(self, text: str | None) -> str:
        """An upstream message fit for the log: no API key, no control characters, short."""
        if not text:
            return ""
        clean = " ".join(text.replace(self._api_key, "[redacted]").split())
        if len(clean) > _MAX_UPSTREAM_MESSAGE:
            clean = clean[: _MAX_UPSTREAM_MESSAGE - 1] + "…"
        return clean

    async def _record(
        self,
        labels: CallLabels,
        model: str,
        attempt: int,
        outcome: str,
        started: float,
        on_attempt: AttemptCallback | None,
        *,
        usage: Usage | None = None,
        cost: float = 0.0,
    ) -> None:
        record = UsageRecord(
            labels=labels,
            model=model,
            attempt=attempt,
            outcome=outcome,
            duration_s=time.monotonic() - started,
            usage=usage or Usage(),
            cost_usd=cost,
        )
        tracing.upstream_attempt(record)
        try:
            await self._sink.record(record)
        except Exception:
            log.exception("usage sink failed; dropping one usage record")
        if on_attempt is not None:
            try:
                await on_attempt(record)
            except Exception:
                log.exception("the per-attempt callback failed (attempt %d of %s)", attempt, model)

    # -- the Batch API ------------------------------------------------------------------------

    async def create_batch(
        self, model: str, requests: Sequence[tuple[str, ModelRequest]], *, display_name: str
    ) -> BatchStatus:
        """See `gateway.model.BatchClient.create_batch`: one batch of inline requests, each
        built exactly as an interactive call of the same request, its key in its metadata."""
        inlined = [
            types.InlinedRequest(
                contents=_contents(request),
                config=self._configs.get(request),
                metadata={_LINE_KEY: key},
            )
            for key, request in requests
        ]
        config = types.CreateBatchJobConfig(display_name=display_name)
        batches = self._sdk().aio.batches
        job = await self._batch_call(
            model, None, lambda: batches.create(model=model, src=inlined, config=config)
        )
        return self._batch_status(job, model)

    async def get_batch(self, name: str, model: str) -> BatchStatus:
        """See `gateway.model.BatchClient.get_batch`."""
        batches = self._sdk().aio.batches
        job = await self._batch_call(model, name, lambda: batches.get(name=name))
        return self._batch_status(job, model)

    async def cancel_batch(self, name: str) -> None:
        """See `gateway.model.BatchClient.cancel_batch`."""
        batches = self._sdk().aio.batches
        await self._batch_call("", name, lambda: batches.cancel(name=name))

    async def find_batch(self, display_name: str, model: str) -> BatchStatus | None:
        """See `gateway.model.BatchClient.find_batch` (pages through the project's batches)."""
        batches = self._sdk().aio.batches

        async def search() -> types.BatchJob | None:
            pager = await batches.list(config=types.ListBatchJobsConfig(page_size=100))
            async for job in pager:
                if job.display_name == display_name:
                    return job
            return None

        found = await self._batch_call(model, None, search)
        return None if found is None else self._batch_status(found, model)

    async def _batch_call(
        self, model: str, batch: str | None, call: Callable[[], Awaitable[Any]]
    ) -> Any:
        """One Batch API call about `model`'s batches (`batch`: the one it names) bounded by
        `attempt_timeout_s`; failures as domain errors."""
        try:
            async with asyncio.timeout(self._settings.attempt_timeout_s):
                return await call()
        except genai_errors.APIError as exc:
            if exc.code == 404 and batch is not None:
                raise UpstreamRejected(f"Gemini does not know batch {batch!r} (404)") from None
            raise self._classify(exc, model, capped_by_deadline=False).error from None
        except Exception as exc:  # classified like an interactive attempt's failure
            raise self._classify(exc, model, capped_by_deadline=False).error from None

    def _batch_status(self, job: types.BatchJob, model: str) -> BatchStatus:
        """What the SDK's `BatchJob` says, its lines read like interactive answers."""
        state = _BATCH_STATES.get(_enum_name(job.state) if job.state else "")
        if state is None:
            # A state this adapter does not know (a new one): keep polling, say so once a poll.
            log.warning("Gemini reports batch %s in state %s; polling on", job.name, job.state)
            state = BatchState.RUNNING
        lines: tuple[BatchLine, ...] = ()
        if state is BatchState.SUCCEEDED and job.dest is not None:
            name = job.name or ""
            lines = tuple(
                self._batch_line(name, model, line) for line in job.dest.inlined_responses or ()
            )
        return BatchStatus(job.name or "", state, job.display_name or "", lines)

    def _batch_line(self, name: str, model: str, line: types.InlinedResponse) -> BatchLine:
        key = (line.metadata or {}).get(_LINE_KEY)
        if line.response is None:
            error = line.error or types.JobError()
            code = error.code or 0
            cause = _LINE_ERRORS.get(code, UpstreamUnavailable)
            if upstream := self._sanitize(error.message):
                log.warning(
                    "Gemini's batch %s failed a request (code %s): %s", name, code, upstream
                )
            message = f"Gemini's batch failed this request (code {code})"
            return BatchLine(key, error=cause(message))
        try:
            response = _Answer.fold([line.response]).to_response(
                model, prices=self._prices, attempts=1, batch=True
            )
        except _BadAnswer as bad:
            cost = self._prices.cost_usd(model, bad.usage, batch=True)
            return BatchLine(key, error=bad.error, usage=bad.usage, cost_usd=cost)
        return BatchLine(key, response=response, usage=response.usage, cost_usd=response.cost_usd)


#: The metadata entry that carries a batch line's key.
_LINE_KEY = "key"
#: The SDK's job states -> the batch states the gateway acts on.
_BATCH_STATES = {
    "JOB_STATE_QUEUED": BatchState.PENDING,
    "JOB_STATE_PENDING": BatchState.PENDING,
    "JOB_STATE_RUNNING": BatchState.RUNNING,
    "JOB_STATE_UPDATING": BatchState.RUNNING,
    "JOB_STATE_CANCELLING": BatchState.RUNNING,
    "JOB_STATE_PAUSED": BatchState.RUNNING,
    "JOB_STATE_SUCCEEDED": BatchState.SUCCEEDED,
    "JOB_STATE_PARTIALLY_SUCCEEDED": BatchState.SUCCEEDED,
    "JOB_STATE_FAILED": BatchState.FAILED,
    "JOB_STATE_CANCELLED": BatchState.CANCELLED,
    "JOB_STATE_EXPIRED": BatchState.EXPIRED,
}
#: A failed line's google.rpc.Code -> its domain error (anything else: unavailable, retryable).
_LINE_ERRORS: dict[int, type[UpstreamError]] = {
    3: UpstreamRejected,  # INVALID_ARGUMENT
    5: UpstreamRejected,  # NOT_FOUND
    9: UpstreamRejected,  # FAILED_PRECONDITION
    11: UpstreamRejected,  # OUT_OF_RANGE
    12: UpstreamRejected,  # UNIMPLEMENTED
}


def _refuses_credentials(exc: genai_errors.APIError) -> bool:
    """Whether Gemini's error says the API key itself is refused (401/403, API_KEY_INVALID)."""
    if exc.code in (401, 403):
        return True
    body = exc.details if isinstance(exc.details, Mapping) else {}
    error = body.get("error", body)
    details = error.get("details") if isinstance(error, Mapping) else None
    reasons = {d.get("reason") for d in details or () if isinstance(d, Mapping)}
    return "API_KEY_INVALID" in reasons


# -- reading answers -------------------------------------------------------------------------


def usage_from_metadata(meta: types.GenerateContentResponseUsageMetadata | None) -> Usage:
    """Token counts by kind from Gemini's `usageMetadata`.

    Image output is the IMAGE entry of `candidatesTokensDetails`; text output is the rest of
    `candidatesTokenCount`. Tool-use prompt tokens are billed as input, so they count as prompt.
    """
    if meta is None:
        return Usage()
    candidates = meta.candidates_token_count or 0
    image_output = sum(
        d.token_count or 0
        for d in meta.candidates_tokens_details or ()
        if d.modality == types.MediaModality.IMAGE
    )
    prompt = (meta.prompt_token_count or 0) + (meta.tool_use_prompt_token_count or 0)
    thinking = meta.thoughts_token_count or 0
    return Usage(
        prompt_tokens=prompt,
        cached_prompt_tokens=meta.cached_content_token_count or 0,
        output_tokens=max(0, candidates - image_output),
        thinking_tokens=thinking,
        image_output_tokens=image_output,
        total_tokens=meta.total_token_count or prompt + candidates + thinking,
    )


def response_from_sdk(
    responses: Iterable[types.GenerateContentResponse],
    *,
    model: str,
    prices: PriceBook,
    attempts: int = 1,
) -> ModelResponse:
    """What the adapter makes of one attempt's response (or stream chunks), cost included.

    Raises `SafetyBlocked` for a blocked prompt or a candidate stopped on safety grounds, and
    `UpstreamBadResponse` for an answer without any candidate. `GeminiClient` reads every
    answer through here; it is public so recorded real responses can be checked against it.
    """
    try:
        return _Answer.fold(responses).to_response(model, prices=prices, attempts=attempts)
    except _BadAnswer as bad:
        raise bad.error from None


@dataclass(slots=True)
class _Answer:
    """One attempt's response(s), folded: streams arrive as chunks, unary calls as one."""

    text: list[str] = field(default_factory=list)
    images: list[Blob] = field(default_factory=list)
    finish_reason: str | None = None
    finish_message: str | None = None
    block_reason: str | None = None
    has_candidate: bool = False
    meta: types.GenerateContentResponseUsageMetadata | None = None
    model_version: str | None = None

    @classmethod
    def fold(cls, responses: Iterable[types.GenerateContentResponse]) -> _Answer:
        answer = cls()
        for response in responses:
            answer.add(response)
        return answer

    def add(self, response: types.GenerateContentResponse) -> str:
        """Takes in one response or chunk; returns the (non-thought) text it carried."""
        if response.usage_metadata is not None:
            self.meta = response.usage_metadata  # each chunk carries the running totals
        self.model_version = self.model_version or response.model_version
        feedback = response.prompt_feedback
        if feedback is not None and feedback.block_reason is not None:
            self.block_reason = _enum_name(feedback.block_reason)
        if not response.candidates:
            return ""
        candidate = response.candidates[0]
        self.has_candidate = True
        if candidate.finish_reason is not None:
            self.finish_reason = _enum_name(candidate.finish_reason)
            self.finish_message = candidate.finish_message
        text = []
        for part in (candidate.content.parts if candidate.content else None) or ():
            if part.text is not None and not part.thought:
                text.append(part.text)
            elif part.inline_data is not None and part.inline_data.data:
                blob = part.inline_data
                self.images.append(Blob(blob.data or b"", blob.mime_type or "image/png"))
        chunk = "".join(text)
        if chunk:
            self.text.append(chunk)
        return chunk

    def to_response(
        self, model: str, *, prices: PriceBook, attempts: int, batch: bool = False
    ) -> ModelResponse:
        """The successful answer (priced as a batch line when `batch`), or the `_BadAnswer`
        that says why there is none."""
        usage = usage_from_metadata(self.meta)
        if self.block_reason is not None:
            raise _BadAnswer(_blocked_prompt(self.block_reason), retryable=False, usage=usage)
        if self.finish_reason in SAFETY_FINISH_REASONS:
            raise _BadAnswer(_refused_candidate(self.finish_reason), retryable=False, usage=usage)
        if not self.has_candidate:
            raise _BadAnswer(
                UpstreamBadResponse("Gemini answered without any candidate"),
                retryable=True,
                usage=usage,
            )
        return ModelResponse(
            text="".join(self.text),
            images=tuple(self.images),
            usage=usage,
            cost_usd=prices.cost_usd(model, usage, batch=batch),
            finish_reason=self.finish_reason or "FINISH_REASON_UNSPECIFIED",
            model_version=self.model_version or model,
            attempts=attempts,
        )


def _blocked_prompt(reason: str) -> SafetyBlocked:
    return SafetyBlocked(
        f"Gemini's safety filters blocked the request (block reason {reason}). Change the text "
        "or the images you sent (for example remove violent, sexual or hateful content) and "
        "try again.",
        metadata={"block_reason": reason},
    )


def _refused_candidate(reason: str) -> SafetyBlocked:
    if reason.endswith("RECITATION"):
        advice = (
            "the output would have reproduced existing material too closely; ask for something "
            "more original"
        )
    elif reason.startswith("IMAGE_"):
        advice = (
            "Gemini refused to produce this image; change the prompt or the reference images "
            "(for example avoid real people's likeness or sensitive scenes)"
        )
    else:
        advice = "change the text or the images you sent and try again"
    return SafetyBlocked(
        f"Gemini stopped on content grounds (finish reason {reason}): {advice}.",
        metadata={"finish_reason": reason},
    )


def _enum_name(value: Any) -> str:
    return str(getattr(value, "value", value))


# -- request building ------------------------------------------------------------------------


def _contents(request: ModelRequest) -> types.Content:
    # One Content object, not a list or dicts: google-genai's content normalization passes it
    # through untouched, while lists and dicts cost it extra validation passes on every call.
    parts = []
    for part in request.parts:
        if part.text is not None:
            parts.append(types.Part(text=part.text))
        elif part.blob is not None:
            blob = types.Blob(data=part.blob.data, mime_type=part.blob.mime_type)
            parts.append(types.Part(inline_data=blob))
        elif part.file is not None:
            file = types.FileData(file_uri=part.file.uri, mime_type=part.file.mime_type)
            parts.append(types.Part(file_data=file))
    return types.Content(role="user", parts=parts)


def _config(request: ModelRequest) -> types.GenerateContentConfig:
    schema = _plain(request.response_schema) if request.response_schema is not None else None
    wants_image = "IMAGE" in request.response_modalities
    system = None
    if request.system_instruction is not None:
        # As the Content google-genai would make of the text (a user turn of one part): given
        # one, it skips that validation on every call (the config is built once and reused).
        system = types.Content(role="user", parts=[types.Part(text=request.system_instruction)])
    return types.GenerateContentConfig(
        system_instruction=system,
        temperature=request.temperature,
        max_output_tokens=request.max_output_tokens,
        response_mime_type="application/json" if schema is not None else None,
        response_json_schema=schema,
        response_modalities=list(request.response_modalities) if wants_image else None,
        image_config=(
            types.ImageConfig(aspect_ratio=request.image_aspect_ratio)
            if request.image_aspect_ratio
            else None
        ),
        # Our retry loop owns every repeat: no function-calling loop, no stream continuation.
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        automatic_continuation=False,
    )


class _ConfigCache:
    """`GenerateContentConfig`s by request settings, so each operation's is built once.

    Operations reuse one schema object per operation, so the schema's identity is the key (the
    entry holds the schema, so the identity cannot be recycled while cached). Sharing is safe:
    google-genai deep-copies the config on every call before touching it.
    """

    _MAX_ENTRIES = 256

    def __init__(self) -> None:
        self._entries: OrderedDict[
            tuple[Any, ...], tuple[Mapping[str, Any] | None, types.GenerateContentConfig]
        ] = OrderedDict()

    def get(self, request: ModelRequest) -> types.GenerateContentConfig:
        key = (
            id(request.response_schema),
            request.system_instruction,
            request.temperature,
            request.max_output_tokens,
            tuple(request.response_modalities),
            request.image_aspect_ratio,
        )
        entry = self._entries.get(key)
        if entry is not None and entry[0] is request.response_schema:
            self._entries.move_to_end(key)
            return entry[1]
        config = _config(request)
        self._entries[key] = (request.response_schema, config)
        if len(self._entries) > self._MAX_ENTRIES:
            self._entries.popitem(last=False)
        return config


def _plain(value: Any) -> Any:
    """Mappings and sequences as plain dicts and lists (the SDK serializes with json.dumps)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [_plain(v) for v in value]
    return value


# -- failure plumbing ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Failure:
    error: GatewayError
    retryable: bool
    server_delay_s: float | None = None
    usage: Usage | None = None


class _BadAnswer(Exception):
    """An HTTP-successful answer that is not a usable one (safety block, no candidate)."""

    def __init__(self, error: UpstreamError | SafetyBlocked, *, retryable: bool, usage: Usage):
        super().__init__(error.message)
        self.error = error
        self.retryable = retryable
        self.usage = usage


class _CallbackFailed(Exception):
    """The caller's `on_text` raised; its exception must reach the caller untouched."""

    def __init__(self, original: Exception) -> None:
        super().__init__(str(original))
        self.original = original


__all__ = [
    "RETRYABLE_HTTP_STATUS",
    "SAFETY_FINISH_REASONS",
    "GeminiClient",
    "response_from_sdk",
    "usage_from_metadata",
]
