/** `createGatewayClient`: typed clients for both gateway services over one gRPC transport. */

import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { credentialHeaders, type Credentials } from "./credentials.js";
import { GatewayService } from "./gen/viewbait/ai/v1/gateway_service_pb.js";
import { JobService } from "./gen/viewbait/ai/v1/job_service_pb.js";

/** Where the gateway is and who calls it. */
export interface GatewayClientOptions extends Credentials {
  /** The gateway's address, e.g. "http://127.0.0.1:50051" (cleartext HTTP/2) or "https://...". */
  baseUrl: string;
}

/** Typed clients for the gateway's two services, sharing one transport. */
export interface GatewayClients {
  /** Run an operation now: GenerateThumbnail (a stream), AnalyzeVideo, ... */
  gateway: Client<typeof GatewayService>;
  /** Run operations in the background: SubmitJob, GetJob, WatchJob, CancelJob, ListJobs. */
  jobs: Client<typeof JobService>;
}

/**
 * Creates the gateway clients. Create it once per process and share it: the transport keeps one
 * HTTP/2 session to the gateway and multiplexes every call over it.
 *
 * Every call carries the credentials; a call may add its own headers through `CallOptions.headers`
 * (`x-request-id`, or `actingAs(userId, tier)` to act for another user with a service token). Streaming methods return async iterables, and a `for await` loop left
 * early cancels the call. Failed calls throw ConnectError: decode it with `decodeGatewayError`.
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
  const transport = createGrpcTransport({ baseUrl: options.baseUrl, interceptors: [authenticate] });
  return {
    gateway: createClient(GatewayService, transport),
    jobs: createClient(JobService, transport),
  };
}
