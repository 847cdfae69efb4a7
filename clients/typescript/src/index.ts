/**
 * TypeScript client of the ViewBait AI Gateway (Node.js, server side only): typed gRPC clients
 * for GatewayService, JobService and UsageService, credentials, TLS options, decoded errors, and
 * jobs followed to their end across broken streams (`runJob`, `awaitJob`). The generated messages and
 * schemas are re-exported: build requests with `create(AnalyzeVideoRequestSchema, {...})` from
 * "@bufbuild/protobuf".
 */

export { createGatewayClient, type GatewayClientOptions, type GatewayClients } from "./client.js";
export {
  AUTHORIZATION_HEADER,
  REQUEST_ID_HEADER,
  TIER_HEADER,
  USER_ID_HEADER,
  actingAs,
  credentialHeaders,
  type Credentials,
} from "./credentials.js";
export {
  RETRY_AFTER_HEADER,
  decodeGatewayError,
  type FieldViolation,
  type GatewayError,
} from "./errors.js";
export {
  DEFAULT_BACKOFF,
  JobCancelledError,
  JobFailedError,
  finalJob,
  isTerminal,
  type Backoff,
  type FollowJobOptions,
  type JobWaitOptions,
  type RunJobOptions,
  type SubmitJobInit,
} from "./jobs.js";
export { tlsSessionOptions, type TlsOptions } from "./tls.js";
export { Code, ConnectError } from "@connectrpc/connect";
export * from "./gen/viewbait/ai/v1/common_pb.js";
export * from "./gen/viewbait/ai/v1/gateway_service_pb.js";
export * from "./gen/viewbait/ai/v1/job_pb.js";
export * from "./gen/viewbait/ai/v1/job_service_pb.js";
export * from "./gen/viewbait/ai/v1/operations_pb.js";
export * from "./gen/viewbait/ai/v1/usage_service_pb.js";
