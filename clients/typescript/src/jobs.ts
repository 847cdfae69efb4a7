/**
 * Submit a job and follow it to its end, surviving broken streams.
 *
 * `followJob` turns JobService.WatchJob into a stream that outlives the connection it started on:
 * when the stream breaks (Unavailable: a connection reset, a gateway restarting or draining) it
 * reconnects with capped exponential backoff and full jitter, and resumes after the last sequence
 * number it yielded, so no event is repeated. The job's state is a snapshot per event, so an event
 * missed while disconnected is folded into the next one: nothing the job did is lost.
 *
 * `runJob` submits first; `finalJob` drains such a stream into the job's outcome: the succeeded
 * job, or a thrown `JobFailedError` / `JobCancelledError`. The clients of `createGatewayClient`
 * carry them as `runJob`, `followJob` and `awaitJob`.
 */

import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type CallOptions, type Client } from "@connectrpc/connect";
import { setTimeout as sleep } from "node:timers/promises";
import { decodeGatewayError } from "./errors.js";
import { ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";
import { JobStatus, type Job } from "./gen/viewbait/ai/v1/job_pb.js";
import type {
  JobService,
  SubmitJobRequestSchema,
  WatchJobResponse,
} from "./gen/viewbait/ai/v1/job_service_pb.js";

/** A SubmitJobRequest, as a message or as the plain object `create` accepts. */
export type SubmitJobInit = MessageInitShape<typeof SubmitJobRequestSchema>;

/**
 * Waits between reconnects: full jitter over a ceiling that doubles from `initialDelayMs` up to
 * `maxDelayMs`, starting again once a stream delivers an event. A retry delay the gateway asked
 * for (RetryInfo) is waited at least.
 */
export interface Backoff {
  initialDelayMs: number;
  maxDelayMs: number;
}

export const DEFAULT_BACKOFF: Backoff = { initialDelayMs: 100, maxDelayMs: 5_000 };

/** How `runJob`, `followJob` and `awaitJob` wait. */
export interface JobWaitOptions {
  /** Stop following: the iteration throws ConnectError Canceled (and ends the stream). */
  signal?: AbortSignal | undefined;
  /**
   * The whole wait (submit, stream, reconnects): then ConnectError DeadlineExceeded, with the
   * job id in its ErrorInfo metadata (`job_id`). The job goes on regardless.
   */
  timeoutMs?: number | undefined;
  /** Headers of every call made, e.g. `actingAs(userId, tier)` or `x-request-id`. */
  headers?: CallOptions["headers"] | undefined;
  /**
   * Cancel the job on the gateway when the caller leaves before it finished (`break`, abort,
   * timeout, an error). Off by default: the job goes on and can be followed again.
   */
  cancelOnAbandon?: boolean | undefined;
  /** Waits between reconnects (default `DEFAULT_BACKOFF`). */
  backoff?: Backoff | undefined;
  /** Hears of each reconnect (or repeated submit) before its wait: what failed, the wait. */
  onRetry?: ((error: ConnectError, delayMs: number) => void) | undefined;
}

/** Options of `followJob`. */
export interface FollowJobOptions extends JobWaitOptions {
  /** Resume after this event (the last `sequence` seen earlier); 0 starts at the current state. */
  afterSequence?: bigint | undefined;
}

/** Options of `runJob` and `awaitJob`. */
export interface RunJobOptions extends JobWaitOptions {
  /**
   * Sent as SubmitJobRequest.idempotency_key (or use the request's own). With a key, a submit
   * that could not reach the gateway is sent again and joins the job the first one may have
   * queued, as does a later call with the same key; without one it is thrown, since a retry
   * could queue the job twice.
   */
  idempotencyKey?: string | undefined;
}

const TERMINAL = new Set([JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED]);
/** Failures after which a stream (or a keyed submit) is tried again. */
const RESUMABLE = new Set([Code.Unavailable, Code.Canceled]);
/** Bound on the CancelJob call made for `cancelOnAbandon`. */
const CANCEL_TIMEOUT_MS = 5_000;

/** Whether a job has reached its last state. */
export function isTerminal(job: Job | undefined): boolean {
  return job !== undefined && TERMINAL.has(job.status);
}

// ConnectError's own instanceof check accepts any ConnectError-shaped value; the subclasses
// below answer by their prototype chain, while still passing as ConnectErrors (name and shape).
function hasInstance(this: abstract new (...args: never[]) => unknown, value: unknown): boolean {
  return typeof value === "object" && value !== null && this.prototype.isPrototypeOf(value);
}

/** An ErrorInfo detail naming the job (if known), for `decodeGatewayError`. */
function errorDetails(reason: string, jobId: string) {
  return [{ desc: ErrorInfoSchema, value: { reason, metadata: jobId ? { job_id: jobId } : {} } }];
}

/**
 * The job failed. `code`, `rawMessage` and the ErrorInfo reason (`decodeGatewayError(err).reason`)
 * are those of the job's error: what the same failure would have been as an RPC error.
 */
export class JobFailedError extends ConnectError {
  /** The job as it ended. */
  readonly job: Job;

  constructor(job: Job) {
    const error = job.error;
    super(
      error?.message || `job ${job.id} failed`,
      (error?.code as number | undefined) || Code.Unknown,
      undefined,
      errorDetails(error?.reason ?? "", job.id),
    );
    this.job = job;
  }

  static override [Symbol.hasInstance] = hasInstance;
}

/** The job was cancelled (by its owner, through any client) before it finished. */
export class JobCancelledError extends ConnectError {
  /** The job as it ended. */
  readonly job: Job;

  constructor(job: Job) {
    super(`job ${job.id} was cancelled before it finished`, Code.Canceled, undefined, errorDetails("CANCELLED", job.id));
    this.job = job;
  }

  static override [Symbol.hasInstance] = hasInstance;
}

/** A terminal job as an outcome: itself when it succeeded, else the matching error thrown. */
function outcome(job: Job): Job {
  switch (job.status) {
    case JobStatus.SUCCEEDED:
      return job;
    case JobStatus.FAILED:
      throw new JobFailedError(job);
    case JobStatus.CANCELLED:
      throw new JobCancelledError(job);
    default:
      throw new TypeError(`job ${job.id} has not finished (status ${JobStatus[job.status]})`);
  }
}

/**
 * Reads a job's events to the end: the succeeded job (with its result), or a thrown
 * `JobFailedError` / `JobCancelledError`. Errors of the stream itself propagate.
 */
export async function finalJob(events: AsyncIterable<WatchJobResponse>): Promise<Job> {
  let last: Job | undefined;
  for await (const event of events) last = event.job; // the stream ends after the terminal state
  if (last === undefined || !isTerminal(last)) {
    throw new ConnectError("the job's events ended before the job finished", Code.Unavailable);
  }
  return outcome(last);
}

/** One helper call's budget: the caller's signal and overall deadline. */
class Budget {
  private readonly deadline: number | undefined;

  constructor(private readonly options: JobWaitOptions) {
    this.deadline = options.timeoutMs === undefined ? undefined : Date.now() + options.timeoutMs;
  }

  /** Options for one call: the caller's signal and headers, the time left as its deadline. */
  call(signal: AbortSignal | undefined = this.options.signal): CallOptions {
    const call: CallOptions = {};
    if (signal !== undefined) call.signal = signal;
    if (this.options.headers !== undefined) call.headers = this.options.headers;
    if (this.deadline !== undefined) call.timeoutMs = Math.max(1, Math.ceil(this.deadline - Date.now()));
    return call;
  }

  /**
   * Throws what ends the wait, if anything does: the caller's abort or the deadline. `jobId` is
   * empty while the job is being submitted.
   */
  check(jobId: string, cause?: unknown): void {
    const signal = this.options.signal;
    if (signal?.aborted) {
      throw new ConnectError(
        jobId ? `stopped following job ${jobId}: the caller aborted` : "stopped submitting the job: the caller aborted",
        Code.Canceled,
        undefined,
        errorDetails("CANCELLED", jobId),
        signal.reason ?? cause,
      );
    }
    if (this.deadline !== undefined && Date.now() >= this.deadline) {
      throw new ConnectError(
        jobId
          ? `job ${jobId} did not finish within ${this.options.timeoutMs} ms; it goes on`
          : `the job was not submitted within ${this.options.timeoutMs} ms`,
        Code.DeadlineExceeded,
        undefined,
        errorDetails("DEADLINE_EXCEEDED", jobId),
        cause,
      );
    }
  }

  /** Waits before attempt `failures + 1`, within the deadline and until the caller aborts. */
  async retryAfter(failures: number, error: ConnectError, jobId: string): Promise<void> {
    const { initialDelayMs, maxDelayMs } = this.options.backoff ?? DEFAULT_BACKOFF;
    const ceiling = Math.min(maxDelayMs, initialDelayMs * 2 ** Math.min(failures, 52));
    let delayMs = Math.max(Math.random() * ceiling, decodeGatewayError(error).retryAfterMs ?? 0);
    if (this.deadline !== undefined) delayMs = Math.max(0, Math.min(delayMs, this.deadline - Date.now()));
    this.options.onRetry?.(error, delayMs);
    try {
      await sleep(delayMs, undefined, this.options.signal ? { signal: this.options.signal } : {});
    } catch (abort) {
      this.check(jobId, abort);
      throw abort;
    }
    this.check(jobId, error);
  }
}

/** The idempotency key the gateway will use: the request's own, else an embedded GenerateThumbnail's. */
function idempotencyKeyOf(request: SubmitJobInit): string {
  if (request.idempotencyKey) return request.idempotencyKey;
  const operation = request.operation;
  return operation?.case === "generateThumbnail" ? (operation.value?.idempotencyKey ?? "") : "";
}

function withIdempotencyKey(request: SubmitJobInit, key: string | undefined): SubmitJobInit {
  if (!key || request.idempotencyKey === key) return request;
  if (request.idempotencyKey) {
    throw new TypeError("idempotencyKey differs from request.idempotencyKey; set one of them, or both to the same key");
  }
  return { ...request, idempotencyKey: key }; // a copy: the caller's request is left alone
}

/**
 * Submits; with an idempotency key, a submit that could not reach the gateway is sent again (it
 * joins the job the first one may have queued). Without a key it is not: a retry could queue the
 * job twice.
 */
async function submit(jobs: Client<typeof JobService>, request: SubmitJobInit, budget: Budget): Promise<string> {
  const retryable = idempotencyKeyOf(request) !== "";
  for (let failures = 0; ; failures++) {
    budget.check("");
    try {
      const { job } = await jobs.submitJob(request, budget.call());
      if (job === undefined) throw new ConnectError("SubmitJob answered without a job", Code.Internal);
      return job.id;
    } catch (err) {
      budget.check("", err);
      const error = ConnectError.from(err);
      if (!(retryable && RESUMABLE.has(error.code))) throw err;
      await budget.retryAfter(failures, error, "");
    }
  }
}

async function* follow(
  jobs: Client<typeof JobService>,
  jobId: string,
  afterSequence: bigint,
  budget: Budget,
  options: JobWaitOptions,
): AsyncGenerator<WatchJobResponse, void, undefined> {
  let seen = afterSequence;
  let failures = 0;
  let finished = false;
  try {
    for (;;) {
      budget.check(jobId);
      // Leaving a Connect stream's loop does not end the call: this controller does, whenever
      // this attempt ends (the caller broke out, an error, the end of the stream).
      const call = new AbortController();
      const stop = () => call.abort(options.signal?.reason);
      options.signal?.addEventListener("abort", stop, { once: true });
      const stream = jobs.watchJob({ jobId, afterSequence: seen }, budget.call(call.signal))[Symbol.asyncIterator]();
      let error: ConnectError;
      let received = false;
      try {
        for (let next = await stream.next(); !next.done; next = await stream.next()) {
          received = true;
          const event = next.value;
          if (event.sequence <= seen) continue; // never hand the caller an event twice
          seen = event.sequence;
          failures = 0;
          finished = isTerminal(event.job);
          yield event;
          if (finished) return;
        }
        // A stream that ends with nothing at all after `seen` is the gateway's answer for a job
        // that was already over at `seen` (a resume after its terminal event): nothing will come.
        if (!received && seen > 0n) {
          const { job } = await jobs.getJob({ jobId }, budget.call(call.signal));
          if (isTerminal(job)) {
            finished = true;
            return;
          }
        }
        // The gateway ends a stream only after the terminal state: anything else is a broken
        // stream too (e.g. a proxy closing it cleanly).
        error = new ConnectError(`the event stream of job ${jobId} ended before the job finished`, Code.Unavailable);
      } catch (err) {
        budget.check(jobId, err);
        error = ConnectError.from(err);
        if (!RESUMABLE.has(error.code)) throw err;
      } finally {
        options.signal?.removeEventListener("abort", stop);
        call.abort();
        // Connect clears the call's deadline timer only once its stream is read to the end (or
        // to the error the abort causes); left unread, the timer would hold the process open.
        await stream.next().catch(() => undefined);
      }
      await budget.retryAfter(failures++, error, jobId);
    }
  } finally {
    if (options.cancelOnAbandon && !finished) {
      await jobs
        .cancelJob(
          { jobId },
          options.headers === undefined
            ? { timeoutMs: CANCEL_TIMEOUT_MS }
            : { timeoutMs: CANCEL_TIMEOUT_MS, headers: options.headers },
        )
        .catch(() => undefined); // best effort: the caller has already left
    }
  }
}

/**
 * Yields a job's events: its current state, then each change (progress, transitions), ending
 * after the terminal state (SUCCEEDED with the result, FAILED, CANCELLED). A broken stream is
 * reopened after `backoff` and resumed after the last `sequence` yielded; other failures throw.
 * Leaving the loop (`break`, an exception) or aborting `signal` ends the stream, and with
 * `cancelOnAbandon` cancels the job.
 */
export function followJob(
  jobs: Client<typeof JobService>,
  jobId: string,
  options: FollowJobOptions = {},
): AsyncGenerator<WatchJobResponse, void, undefined> {
  return follow(jobs, jobId, options.afterSequence ?? 0n, new Budget(options), options);
}

/** Submits a job, then yields its events as `followJob` does. `timeoutMs` bounds both. */
export async function* runJob(
  jobs: Client<typeof JobService>,
  request: SubmitJobInit,
  options: RunJobOptions = {},
): AsyncGenerator<WatchJobResponse, void, undefined> {
  const budget = new Budget(options);
  const jobId = await submit(jobs, withIdempotencyKey(request, options.idempotencyKey), budget);
  yield* follow(jobs, jobId, 0n, budget, options);
}

/**
 * Submits a job and waits for it: the succeeded job with its result, or a thrown
 * `JobFailedError`, `JobCancelledError` or ConnectError (DeadlineExceeded after `timeoutMs`,
 * Canceled when `signal` aborts).
 */
export function awaitJob(
  jobs: Client<typeof JobService>,
  request: SubmitJobInit,
  options: RunJobOptions = {},
): Promise<Job> {
  return finalJob(runJob(jobs, request, options));
}
