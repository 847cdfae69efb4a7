/**
 * Gateway errors, decoded.
 *
 * The gateway answers failures with the google.rpc richer error model: a google.rpc.Status in the
 * `grpc-status-details-bin` trailer with ErrorInfo (a stable `reason`), BadRequest (field
 * violations) and RetryInfo (when to try again), plus `retry-after-ms` trailing metadata.
 * Connect surfaces all of it on ConnectError; `decodeGatewayError` turns it into one typed value.
 */

import { Code, ConnectError } from "@connectrpc/connect";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  RetryInfoSchema,
} from "./gen/google/rpc/error_details_pb.js";

/** Trailing metadata key of the retry-after in whole milliseconds (mirrors RetryInfo). */
export const RETRY_AFTER_HEADER = "retry-after-ms";

/** One bad request field: its path (e.g. `references[2].data`) and what is wrong with it. */
export interface FieldViolation {
  field: string;
  description: string;
}

/** Everything the gateway said about a failed call. */
export interface GatewayError {
  /** The gRPC status code. */
  code: Code;
  /** The status message, written for people (without Connect's "[code]" prefix). */
  message: string;
  /** google.rpc.ErrorInfo.reason: a stable UPPER_SNAKE_CASE code to branch on, if sent. */
  reason: string | undefined;
  /** google.rpc.ErrorInfo.domain ("ai.viewbait.app" for the gateway's own errors), if sent. */
  domain: string | undefined;
  /** google.rpc.ErrorInfo.metadata. */
  errorMetadata: Record<string, string>;
  /** When to retry, from RetryInfo or else the `retry-after-ms` trailer; undefined if not said. */
  retryAfterMs: number | undefined;
  /** BadRequest field violations (INVALID_ARGUMENT). */
  violations: FieldViolation[];
  /** The ConnectError it was decoded from (metadata, raw details). */
  cause: ConnectError;
}

/**
 * Decodes any error a gateway call threw. Errors that are not ConnectErrors (a bug in calling
 * code, say) become code Unknown, as ConnectError.from treats them.
 */
export function decodeGatewayError(error: unknown): GatewayError {
  const cause = ConnectError.from(error);
  const info = cause.findDetails(ErrorInfoSchema)[0];
  const retry = cause.findDetails(RetryInfoSchema)[0]?.retryDelay;
  const violations = cause
    .findDetails(BadRequestSchema)
    .flatMap((bad) => bad.fieldViolations.map(({ field, description }) => ({ field, description })));
  return {
    code: cause.code,
    message: cause.rawMessage,
    reason: info?.reason,
    domain: info?.domain,
    errorMetadata: { ...info?.metadata },
    retryAfterMs:
      retry !== undefined
        ? Number(retry.seconds) * 1000 + retry.nanos / 1e6
        : retryAfterTrailer(cause.metadata.get(RETRY_AFTER_HEADER)),
    violations,
    cause,
  };
}

function retryAfterTrailer(value: string | null): number | undefined {
  if (value === null || !/^\s*\d+\s*$/.test(value)) return undefined;
  return Number.parseInt(value, 10);
}
