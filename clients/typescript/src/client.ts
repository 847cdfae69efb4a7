/** `createGatewayClient`: typed clients for the gateway's services over one gRPC transport. */

import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { credentialHeaders, type Credentials } from "./credentials.js";
import { GatewayService } from "./gen/viewbait/ai/v1/gateway_service_pb.js";
import type { Job } from "./gen/viewbait/ai/v1/job_pb.js";
import { JobService, type WatchJobResponse } from "./gen/viewbait/ai/v1/job_service_pb.js";
import { UsageService } from "./gen/viewbait/ai/v1/usage_service_pb.js";
import { tlsSessionOptions, type TlsOptions } from "./tls.js";
import {
  awaitJob,
  followJob,
  runJob,
  type FollowJobOptions,
  type RunJobOptions,
  type SubmitJobInit,
} from "./jobs.js";

/** Where the gateway is and who calls it. */
export interface GatewayClientOptions extends Credentials {
  /** The gateway's address, e.g. "http://127.0.0.1:50051" (cleartext HTTP/2) or "https://...". */
  baseUrl: string;
  /**
   * TLS settings for an "https://" `baseUrl`: the CA to trust (`ca`), the client certificate of
   * mutual TLS (`cert`, `key`), the name the certificate must carry (`serverName`). Without it an
   * "https://" URL trusts Node's bundled roots.
   */
  tls?: TlsOptions | undefined;
}

/** Typed clients for the gateway's services, sharing one transport. */
export interface GatewayClients {
  /** Run an operation now: GenerateThumbnail (a stream), AnalyzeVideo, ... */
  gateway: Client<typeof GatewayService>;
  /** Run operations in the background: SubmitJob, GetJob, WatchJob, CancelJob, ListJobs. */
  jobs: Client<typeof JobService>;
  /**
   * What was spent and saved: GetUsage (a user's own usage; with the service token, any user's or
   * the fleet's), by day, operation and model, with the budgets that remain.
   */
  usage: Client<typeof UsageService>;
  /**
   * Submits a job and yields its events until it is terminal (see `followJob`):
   * `for await (const event of runJob(request, { timeoutMs, signal })) ...`.
   */
  runJob(request: SubmitJobInit, options?: RunJobOptions): AsyncGenerator<WatchJobResponse, void, undefined>;
  /**
   * Yields a job's events: its current state, then each change (progress, transitions), ending
   * after the terminal state. A broken stream (Unavailable: connection reset, gateway restarting
   * or draining) is reopened with backoff and resumed after the last `sequence` yielded, so no
   * event comes twice. Leaving the loop or aborting `signal` ends the stream; `cancelOnAbandon`
   * also cancels the job.
   */
  followJob(jobId: string, options?: FollowJobOptions): AsyncGenerator<WatchJobResponse, void, undefined>;
  /**
   * Submits a job and waits for it: the succeeded job with its result, or a thrown
   * `JobFailedError` (the job's error as code and reason), `JobCancelledError`, or ConnectError
   * (DeadlineExceeded after `timeoutMs`, Canceled when `signal` aborts).
   */
  awaitJob(request: SubmitJobInit, options?: RunJobOptions): Promise<Job>;
}

/**
 * Creates the gateway clients. Create it once per process and share it: the transport keeps one
 * HTTP/2 session to the gateway and multiplexes every call over it.
 *
 * Every call carries the credentials; a call may add its own headers through `CallOptions.headers`
 * (`x-request-id`, or `actingAs(userId, tier)` to act for another user with a service token).
 * Streaming methods return async iterables. Leaving a `for await` loop early does not end the
 * call (Connect's iterables have no `return`): pass `signal` and abort it, so the gateway stops
 * work nobody waits for (`runJob` and `followJob` do that themselves). Failed calls throw
 * ConnectError: decode it with `decodeGatewayError`.
 */
export function createGatewayClient(options: GatewayClientOptions): GatewayClients {
  const headers = credentialHeaders(options);
  const authenticate: Interceptor = (next) => (request) => {
    // A call's own headers win: a backend with a service token shares one client and says per
    // call whom it acts for, with `headers: actingAs(userId, tier)`.
    for (const [key, value] of headers) {
      if (!request.header.has(key)) request.header.set(key, value);
    }
    return next(request);
  };
  const nodeOptions = tlsSessionOptions(options.baseUrl, options.tls);
  const transport = createGrpcTransport({
    baseUrl: options.baseUrl,
    interceptors: [authenticate],
    ...(nodeOptions === undefined ? {} : { nodeOptions }),
  });
  const jobs = createClient(JobService, transport);
  return {
    gateway: createClient(GatewayService, transport),
    jobs,
    usage: createClient(UsageService, transport),
    runJob: (request, runOptions) => runJob(jobs, request, runOptions),
    followJob: (jobId, followOptions) => followJob(jobs, jobId, followOptions),
    awaitJob: (request, runOptions) => awaitJob(jobs, request, runOptions),
  };
}
