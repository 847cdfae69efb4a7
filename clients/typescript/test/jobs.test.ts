// End to end: `runJob`, `followJob` and `awaitJob` against the real gateway over PostgreSQL. A
// worker process (`python -m gateway worker`) runs the jobs; the client calls a listener
// (`python -m gateway serve` with no workers of its own), which one test restarts mid-job on the
// same port. Needs PostgreSQL (GATEWAY_TEST_DATABASE_URL, default
// postgresql://postgres@127.0.0.1:5432/test): each run uses a fresh schema, dropped afterwards.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import {
  Code,
  ConnectError,
  JobCancelledError,
  JobFailedError,
  JobStatus,
  createGatewayClient,
  decodeGatewayError,
  finalJob,
  type GatewayClients,
  type Job,
  type SubmitJobInit,
  type WatchJobResponse,
} from "../src/index.js";
import {
  DATABASE_URL,
  SERVICE_TOKEN,
  freshSchema,
  injectFault,
  serverMissing,
  setKnobs,
  startGateway,
  type GatewayProcess,
} from "./harness.js";

const TIMEOUT_MS = 30_000;
/** Where each status sits in a job's life (a job without retries never goes back). */
const LIFE: Record<number, number> = {
  [JobStatus.QUEUED]: 0,
  [JobStatus.RUNNING]: 1,
  [JobStatus.SUCCEEDED]: 2,
  [JobStatus.FAILED]: 2,
  [JobStatus.CANCELLED]: 2,
};

const thumbnails = (variations: number): SubmitJobInit => ({
  operation: { case: "generateThumbnail", value: { prompt: "a treehouse at dusk", variations } },
});
const analysis = (videoId: string): SubmitJobInit => ({
  operation: { case: "analyzeVideo", value: { videoId } },
});

/** Each event once, in order, with progress never going back, ending at the terminal state. */
function assertOneLife(events: WatchJobResponse[]): void {
  const sequences = events.map((e) => e.sequence);
  assert.deepEqual(sequences, [...new Set(sequences)].sort((a, b) => (a < b ? -1 : 1)), "no event repeated or reordered");
  const stages = events.map((e) => LIFE[e.job?.status ?? 0]);
  assert.deepEqual(stages, [...stages].sort(), "statuses follow the job's life");
  assert.equal(stages.filter((stage) => stage === 2).length, 1, "one terminal event");
  assert.equal(stages.at(-1), 2, "the terminal event comes last");
  const running = events.flatMap((e) => (e.job?.status === JobStatus.RUNNING ? [e.job.progress?.fraction ?? 0] : []));
  assert.deepEqual(running, [...running].sort((a, b) => a - b), "progress never goes back");
}

/** Runs a call that must fail and returns what it threw. */
async function thrown(call: () => Promise<unknown>): Promise<unknown> {
  try {
    await call();
  } catch (error) {
    return error;
  }
  assert.fail("the call succeeded but should have failed");
}

test("the job errors are ConnectErrors, and only their own instances pass their instanceof", () => {
  const job = { id: "job-1", status: JobStatus.FAILED, error: { code: 3, reason: "SAFETY_BLOCKED", message: "blocked" } };
  const failed = new JobFailedError(job as unknown as Job);
  const plain = new ConnectError("plain", Code.InvalidArgument);

  assert.ok(failed instanceof ConnectError);
  assert.ok(failed instanceof JobFailedError && !(failed instanceof JobCancelledError));
  assert.ok(!(plain instanceof JobFailedError), "ConnectError's shape check does not make any error a JobFailedError");
  assert.deepEqual(
    (({ code, message, reason, errorMetadata }) => ({ code, message, reason, errorMetadata }))(decodeGatewayError(failed)),
    { code: Code.InvalidArgument, message: "blocked", reason: "SAFETY_BLOCKED", errorMetadata: { job_id: "job-1" } },
  );
});

describe("jobs end to end", { skip: serverMissing }, () => {
  const schema = freshSchema();
  const env = {
    // With a database this is not local mode: the in-process emulator must be asked for.
    VIEWBAIT_GEMINI__BACKEND: "emulator",
    VIEWBAIT_STORE__DATABASE_URL: DATABASE_URL,
    VIEWBAIT_STORE__SCHEMA: schema.name,
    VIEWBAIT_STORE__MIGRATE_ON_START: "true",
    VIEWBAIT_JOBS__POLL_INTERVAL_S: "0.1",
    VIEWBAIT_SERVER__SHUTDOWN_GRACE_S: "0.2",
  };
  let worker: GatewayProcess | undefined;
  let listener: GatewayProcess | undefined;

  /** The backend's client, acting for `userId` (a pro user unless `tier` says otherwise). */
  const client = (userId: string, tier = "pro"): GatewayClients =>
    createGatewayClient({ baseUrl: listener?.baseUrl ?? "", token: SERVICE_TOKEN, userId, tier });
  const listenerEnv = () => ({ ...env, VIEWBAIT_JOBS__WORKERS: "0" });
  const getJob = async (clients: GatewayClients, jobId: string): Promise<Job> => {
    const { job } = await clients.jobs.getJob({ jobId }, { timeoutMs: TIMEOUT_MS });
    assert.ok(job);
    return job;
  };

  before(async () => {
    // The worker stores result images as blobs that the listener reads: with no blob directory
    // set they go to the PostgreSQL both share, as on separate hosts.
    worker = await startGateway({ command: "worker", env });
    listener = await startGateway({ env: listenerEnv() });
  });

  after(async () => {
    await listener?.stop();
    await worker?.stop();
    schema.drop();
  });

  test("runJob yields progress in order to the terminal state; awaitJob returns the result", async () => {
    assert.ok(worker);
    // Staggered images: each variation's "ready" is an event of its own.
    await setKnobs(worker, { latency_s: 0.1, latency_jitter_s: 0.6, seed: 3 });
    const clients = client("user-progress");

    const events: WatchJobResponse[] = [];
    for await (const event of clients.runJob(thumbnails(3), { timeoutMs: TIMEOUT_MS })) events.push(event);
    const analyzed = await clients.awaitJob(analysis("jobHelperT1"), { timeoutMs: TIMEOUT_MS });

    assertOneLife(events);
    const messages = events.map((e) => e.job?.progress?.message);
    assert.ok(messages.includes("3 of 3 images ready"), messages.join(", "));
    const final = events.at(-1)?.job;
    assert.equal(final?.status, JobStatus.SUCCEEDED);
    assert.equal(final?.result.case, "generateThumbnail");
    assert.equal(final?.result.value?.thumbnails.length, 3);
    assert.equal(analyzed.status, JobStatus.SUCCEEDED);
    assert.equal(analyzed.result.case, "analyzeVideo");
    assert.ok(analyzed.result.value?.summary);
  });

  test("following a finished job after its terminal event ends at once, with nothing", async () => {
    assert.ok(worker);
    await setKnobs(worker, { latency_s: 0, latency_jitter_s: 0 });
    const clients = client("user-resume-finished");
    const events: WatchJobResponse[] = [];
    for await (const event of clients.runJob(analysis("jobHelperR1"), { timeoutMs: TIMEOUT_MS })) events.push(event);
    const last = events.at(-1);
    assert.ok(last?.job);

    const follow = async (afterSequence: bigint) => {
      const seen: bigint[] = [];
      for await (const event of clients.followJob(last.job?.id ?? "", { afterSequence, timeoutMs: TIMEOUT_MS })) {
        seen.push(event.sequence);
      }
      return seen;
    };

    // A browser relay resuming with the id of the last event it sent (Server-Sent Events'
    // Last-Event-ID) must end, not wait for events that will never come.
    assert.deepEqual(await follow(last.sequence), []);
    assert.deepEqual(await follow(last.sequence - 1n), [last.sequence]);
  });

  test("a failed job throws JobFailedError carrying the job's error", async () => {
    assert.ok(worker);
    await setKnobs(worker, { latency_s: 0, latency_jitter_s: 0 });
    await injectFault(worker, { kind: "safety", count: 1 }); // not retryable: fails at once

    const error = await thrown(() => client("user-fail").awaitJob(analysis("jobHelperF1"), { timeoutMs: TIMEOUT_MS }));

    assert.ok(error instanceof JobFailedError, String(error));
    assert.ok(error instanceof ConnectError, "a JobFailedError is a ConnectError");
    assert.ok(!(error instanceof JobCancelledError));
    const decoded = decodeGatewayError(error);
    assert.equal(decoded.code, Code.InvalidArgument);
    assert.equal(decoded.reason, "SAFETY_BLOCKED");
    assert.equal(decoded.message, error.job.error?.message);
    assert.deepEqual(decoded.errorMetadata, { job_id: error.job.id });
    assert.equal(error.job.status, JobStatus.FAILED);
  });

  test("a job cancelled while awaited throws JobCancelledError", async () => {
    assert.ok(worker);
    await setKnobs(worker, { latency_s: 5 });
    const clients = client("user-cancelled");

    const events = clients.runJob(analysis("jobHelperC1"), { timeoutMs: TIMEOUT_MS });
    const first = await events.next();
    assert.ok(!first.done && first.value.job);
    await clients.jobs.cancelJob({ jobId: first.value.job.id });
    const error = await thrown(() => finalJob(events));

    assert.ok(error instanceof JobCancelledError, String(error));
    assert.equal(decodeGatewayError(error).code, Code.Canceled);
    assert.equal(error.job.status, JobStatus.CANCELLED);
  });

  test("leaving early cancels the job only with cancelOnAbandon", async () => {
    assert.ok(worker);
    await setKnobs(worker, { latency_s: 5 });
    const clients = client("user-abandon");

    let brokenOff: Job | undefined;
    for await (const event of clients.runJob(analysis("abandonBrk1"), { cancelOnAbandon: true })) {
      brokenOff = event.job;
      break;
    }
    const controller = new AbortController();
    let aborted: Job | undefined;
    const abortError = await thrown(async () => {
      for await (const event of clients.runJob(analysis("abandonSig1"), {
        cancelOnAbandon: true,
        signal: controller.signal,
      })) {
        aborted = event.job;
        controller.abort();
      }
    });
    let kept: Job | undefined;
    for await (const event of clients.runJob(analysis("abandonKep1"))) {
      kept = event.job;
      break;
    }

    assert.ok(brokenOff && aborted && kept);
    assert.equal(decodeGatewayError(abortError).code, Code.Canceled);
    assert.equal((await getJob(clients, brokenOff.id)).status, JobStatus.CANCELLED);
    assert.equal((await getJob(clients, aborted.id)).status, JobStatus.CANCELLED);
    const stillThere = await getJob(clients, kept.id);
    assert.ok(LIFE[stillThere.status] !== 2, `left without cancelOnAbandon, the job goes on (${JobStatus[stillThere.status]})`);
    await clients.jobs.cancelJob({ jobId: kept.id });
  });

  test("timeoutMs ends the wait, not the job", async () => {
    assert.ok(worker);
    await setKnobs(worker, { latency_s: 5 });
    const clients = client("user-timeout");

    const error = await thrown(() => clients.awaitJob(analysis("jobHelperD1"), { timeoutMs: 500 }));

    const decoded = decodeGatewayError(error);
    assert.equal(decoded.code, Code.DeadlineExceeded, decoded.message);
    const jobId = decoded.errorMetadata["job_id"];
    assert.ok(jobId, "the error names the job");
    const job = await getJob(clients, jobId);
    assert.ok(LIFE[job.status] !== 2, "the job goes on");
    await clients.jobs.cancelJob({ jobId });
  });

  test("an idempotency key makes a second run join the first job", async () => {
    assert.ok(worker);
    await setKnobs(worker, { latency_s: 0 });
    const clients = client("user-idempotent");

    const first = await clients.awaitJob(analysis("jobHelperI1"), { idempotencyKey: "once-1", timeoutMs: TIMEOUT_MS });
    const again = await clients.awaitJob(analysis("jobHelperI1"), { idempotencyKey: "once-1", timeoutMs: TIMEOUT_MS });

    assert.equal(again.id, first.id);
    assert.equal(first.idempotencyKey, "once-1");
  });

  test("a stream broken by a gateway restart resumes after the last event seen", async () => {
    // A free user runs one job at a time: while a first job hangs upstream, the second waits
    // queued and unchanged across the listener's restart, so the resumed stream must stay silent
    // rather than repeat the last event seen. Cancelling the first job then lets the second run.
    assert.ok(worker && listener);
    await setKnobs(worker, { latency_s: 1 });
    await injectFault(worker, { kind: "hang", count: 1 });
    const user = client("user-restart", "free");
    let blocker: Job | undefined;
    for await (const event of user.runJob(thumbnails(1), { timeoutMs: TIMEOUT_MS })) {
      blocker = event.job;
      if (blocker?.status === JobStatus.RUNNING) break;
    }
    assert.ok(blocker);
    const blockerId = blocker.id;
    const port = listener.port;
    const retries: ConnectError[] = [];
    const events: WatchJobResponse[] = [];
    let restart: Promise<void> | undefined;

    for await (const event of user.runJob(thumbnails(1), {
      timeoutMs: TIMEOUT_MS,
      backoff: { initialDelayMs: 10, maxDelayMs: 50 },
      onRetry: (error) => retries.push(error),
    })) {
      events.push(event);
      // In the background, so this loop goes on reading (and reconnecting) meanwhile.
      restart ??= (async () => {
        await listener.stop();
        listener = await startGateway({ port, env: listenerEnv() });
        await user.jobs.cancelJob({ jobId: blockerId }, { timeoutMs: TIMEOUT_MS });
      })();
    }
    await restart;
    const final = events.at(-1);
    assert.ok(final?.job);
    const replay: WatchJobResponse[] = [];
    for await (const event of user.followJob(final.job.id)) replay.push(event);

    const restartedAfter = events[0]?.sequence ?? 0n;
    assert.equal(events[0]?.job?.status, JobStatus.QUEUED, "queued behind the first job at the restart");
    assert.ok(retries.length > 0, "the stream broke and was reopened");
    assert.equal(retries[0]?.code, Code.Unavailable, retries[0]?.message);
    assertOneLife(events);
    const resumed = events.filter((e) => e.sequence > restartedAfter);
    assert.ok(resumed.some((e) => e.job?.status === JobStatus.RUNNING), "the job's run seen after the restart");
    assert.equal(final.job.status, JobStatus.SUCCEEDED);
    assert.equal(final.job.result.case, "generateThumbnail");
    assert.deepEqual(
      replay.map((e) => e.sequence),
      [final.sequence],
      "a fresh stream of the finished job sends its terminal event only",
    );
  });
});
