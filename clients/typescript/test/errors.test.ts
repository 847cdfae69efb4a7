// Decoding the gateway's rich errors from gRPC trailers, through the same function Connect's gRPC
// transport uses to turn a trailer into a ConnectError.
import assert from "node:assert/strict";
import { test } from "node:test";
import { create, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { anyPack } from "@bufbuild/protobuf/wkt";
import { findTrailerError } from "@connectrpc/connect/protocol-grpc";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  QuotaFailureSchema,
  RetryInfoSchema,
} from "../src/gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "../src/gen/google/rpc/status_pb.js";
import { Code, decodeGatewayError } from "../src/index.js";

/** Trailers as the gateway sends them for an aborted call. */
function trailers(
  status: MessageInitShape<typeof StatusSchema>,
  extra: Record<string, string> = {},
): Headers {
  const message = create(StatusSchema, status);
  const headers = new Headers(extra);
  headers.set("grpc-status", String(message.code));
  headers.set("grpc-message", encodeURIComponent(message.message));
  // gRPC sends -bin metadata as unpadded base64.
  const bin = Buffer.from(toBinary(StatusSchema, message)).toString("base64").replace(/=+$/, "");
  headers.set("grpc-status-details-bin", bin);
  return headers;
}

function thrown(headers: Headers) {
  const error = findTrailerError(headers);
  assert.ok(error, "the trailers carry an error status");
  return error;
}

const errorInfo = (reason: string, metadata: Record<string, string> = {}) =>
  anyPack(ErrorInfoSchema, create(ErrorInfoSchema, { reason, domain: "ai.viewbait.app", metadata }));
const retryInfo = (seconds: bigint, nanos = 0) =>
  anyPack(RetryInfoSchema, create(RetryInfoSchema, { retryDelay: { seconds, nanos } }));

test("a rate-limit denial decodes reason, domain and retry-after", () => {
  const error = decodeGatewayError(
    thrown(
      trailers(
        {
          code: Code.ResourceExhausted,
          message: "rate limit of route youtube-analyze reached; retry in 1.5 s",
          details: [errorInfo("RATE_LIMITED", { route: "youtube-analyze" }), retryInfo(1n, 500_000_000)],
        },
        { "retry-after-ms": "1500" },
      ),
    ),
  );

  assert.equal(error.code, Code.ResourceExhausted);
  assert.equal(error.message, "rate limit of route youtube-analyze reached; retry in 1.5 s");
  assert.equal(error.reason, "RATE_LIMITED");
  assert.equal(error.domain, "ai.viewbait.app");
  assert.deepEqual(error.errorMetadata, { route: "youtube-analyze" });
  assert.equal(error.retryAfterMs, 1500);
  assert.deepEqual(error.violations, []);
});

test("RetryInfo wins over the retry-after-ms trailer", () => {
  const error = decodeGatewayError(
    thrown(
      trailers(
        { code: Code.Unavailable, message: "Gemini is overloaded", details: [retryInfo(7n)] },
        { "retry-after-ms": "250" },
      ),
    ),
  );

  assert.equal(error.retryAfterMs, 7000);
});

test("the retry-after-ms trailer alone is enough", () => {
  const headers = new Headers({ "grpc-status": "8", "grpc-message": "slow%20down", "retry-after-ms": "250" });

  const error = decodeGatewayError(thrown(headers));

  assert.equal(error.code, Code.ResourceExhausted);
  assert.equal(error.message, "slow down");
  assert.equal(error.retryAfterMs, 250);
  assert.equal(error.reason, undefined);
});

test("an unusable retry-after-ms trailer is ignored", () => {
  for (const value of ["soon", "-5", "1.5e3"]) {
    const headers = new Headers({ "grpc-status": "8", "retry-after-ms": value });

    assert.equal(decodeGatewayError(thrown(headers)).retryAfterMs, undefined, value);
  }
});

test("BadRequest field violations keep their order", () => {
  const badRequest = create(BadRequestSchema, {
    fieldViolations: [
      { field: "video_id", description: "must be a YouTube video id" },
      { field: "references[2].data", description: "image is empty" },
    ],
  });

  const error = decodeGatewayError(
    thrown(
      trailers({
        code: Code.InvalidArgument,
        message: "video_id: must be a YouTube video id; references[2].data: image is empty",
        details: [errorInfo("INVALID_ARGUMENT"), anyPack(BadRequestSchema, badRequest)],
      }),
    ),
  );

  assert.equal(error.code, Code.InvalidArgument);
  assert.equal(error.reason, "INVALID_ARGUMENT");
  assert.equal(error.retryAfterMs, undefined);
  assert.deepEqual(error.violations, [
    { field: "video_id", description: "must be a YouTube video id" },
    { field: "references[2].data", description: "image is empty" },
  ]);
});

test("detail types it does not decode stay reachable on the cause", () => {
  const quota = create(QuotaFailureSchema, {
    violations: [{ subject: "user:u1", description: "daily budget" }],
  });

  const error = decodeGatewayError(
    thrown(
      trailers({
        code: Code.ResourceExhausted,
        message: "daily budget spent",
        details: [errorInfo("BUDGET_EXHAUSTED"), anyPack(QuotaFailureSchema, quota)],
      }),
    ),
  );

  assert.equal(error.reason, "BUDGET_EXHAUSTED");
  assert.deepEqual(error.cause.findDetails(QuotaFailureSchema)[0]?.violations[0]?.subject, "user:u1");
});

test("an error that is not a ConnectError decodes as Unknown", () => {
  const error = decodeGatewayError(new Error("socket hang up"));

  assert.equal(error.code, Code.Unknown);
  assert.equal(error.message, "socket hang up");
  assert.equal(error.reason, undefined);
});
