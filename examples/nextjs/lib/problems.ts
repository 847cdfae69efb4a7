// Gateway errors turned into what a person should read. Branch on the stable `reason` (and the
// gRPC code when there is none), never on message text.
import "server-only";
import { Code, decodeGatewayError, type GatewayError } from "@viewbait/gateway-client";
import type { Problem } from "./shapes";

/** The HTTP status a route answers a problem with. */
export function httpStatus(error: GatewayError): number {
  switch (error.code) {
    case Code.InvalidArgument:
    case Code.OutOfRange:
    case Code.FailedPrecondition:
      return 400;
    case Code.Unauthenticated:
      return 401;
    case Code.PermissionDenied:
      return 403;
    case Code.NotFound:
      return 404;
    case Code.AlreadyExists:
    case Code.Aborted:
      return 409;
    case Code.ResourceExhausted:
      return 429;
    case Code.Unavailable:
    case Code.DeadlineExceeded:
      return 503;
    default:
      return 500;
  }
}

function inWords(seconds: number): string {
  if (seconds < 60) return `${seconds} second${seconds === 1 ? "" : "s"}`;
  const minutes = Math.ceil(seconds / 60);
  if (minutes < 90) return `${minutes} minute${minutes === 1 ? "" : "s"}`;
  return `${Math.ceil(minutes / 60)} hours`;
}

function whenReset(iso: string | undefined): string {
  const at = iso === undefined ? Number.NaN : Date.parse(iso);
  if (Number.isNaN(at)) return "when its period resets";
  return `on ${new Date(at).toUTCString().replace(/:\d\d GMT$/, " UTC")}`;
}

const FIELD_NAMES: Record<string, string> = {
  prompt: "The prompt",
  variations: "The number of images",
  "image.data": "The image",
  image: "The image",
};

/** What a person reads about a failed gateway call (or failed job, as a JobFailedError). */
export function describeProblem(raw: unknown): Problem {
  const error = decodeGatewayError(raw);
  const retryAfterSeconds =
    error.retryAfterMs === undefined ? undefined : Math.max(1, Math.ceil(error.retryAfterMs / 1000));
  const retry = retryAfterSeconds === undefined ? {} : { retryAfterSeconds };
  switch (error.reason) {
    case "RATE_LIMITED":
      return {
        title: "Slow down a little",
        message:
          retryAfterSeconds === undefined
            ? "You have made more requests than your plan allows for now. Please wait a moment."
            : `You have made more requests than your plan allows for now. You can try again in ${inWords(retryAfterSeconds)}.`,
        ...retry,
      };
    case "BUDGET_EXCEEDED": {
      // A refused call says which budget and when it resets; a failed job keeps only the reason.
      const { budget, resets_at: resetsAt } = error.errorMetadata;
      if (budget === "model_day") {
        return {
          title: "Spending limit reached",
          message: `Image generation has reached its spending limit for today. It will be back ${whenReset(resetsAt)}.`,
          ...retry,
        };
      }
      const period = budget === "user_month" ? "this month's" : budget === "user_day" ? "today's" : "the";
      const renews = resetsAt === undefined ? "at the start of each day and month (UTC)" : whenReset(resetsAt);
      return {
        title: "Spending limit reached",
        message: `This goes past ${period} AI allowance of your plan. It renews ${renews}; upgrading your plan raises it.`,
        ...retry,
      };
    }
    case "TOO_MANY_CONCURRENT_RPCS":
    case "TOO_MANY_STREAMS":
    case "OVERLOADED":
      return {
        title: "Busy right now",
        message: "Too much is going on at once. Please try again in a moment.",
        ...retry,
      };
    case "SAFETY_BLOCKED":
      return {
        title: "We can't make that one",
        message: "The image model declined this prompt. Try describing it differently.",
      };
    default:
      break;
  }
  if (error.code === Code.InvalidArgument && error.violations.length > 0) {
    const fixes = error.violations.map(({ field, description }) => `${FIELD_NAMES[field] ?? field}: ${description}`);
    return { title: "Please check your input", message: fixes.join(" ") };
  }
  switch (error.code) {
    case Code.InvalidArgument:
      return { title: "Please check your input", message: error.message };
    case Code.PermissionDenied:
      return {
        title: "Not included in your plan",
        message: "Your plan does not include this feature. Upgrade to use it.",
      };
    case Code.Unauthenticated:
      return { title: "Please sign in again", message: "Your session has ended." };
    case Code.NotFound:
      return { title: "Not found", message: "This job no longer exists, or it belongs to someone else." };
    case Code.Canceled:
      return { title: "Cancelled", message: "The job was cancelled." };
    case Code.ResourceExhausted:
      return { title: "Busy right now", message: "Please try again in a moment.", ...retry };
    case Code.Unavailable:
    case Code.DeadlineExceeded:
      return {
        title: "Temporarily unavailable",
        message: "The AI service is not answering right now. Please try again shortly.",
        ...retry,
      };
    default:
      return {
        title: "Something went wrong",
        message: "That did not work, and it is not your fault. Please try again later.",
      };
  }
}

/** A JSON response carrying a problem, with the matching HTTP status and Retry-After. */
export function problemResponse(raw: unknown): Response {
  const problem = describeProblem(raw);
  const headers: Record<string, string> = {};
  if (problem.retryAfterSeconds !== undefined) headers["retry-after"] = String(problem.retryAfterSeconds);
  if (httpStatus(decodeGatewayError(raw)) >= 500) console.error("gateway call failed:", raw);
  return Response.json({ problem }, { status: httpStatus(decodeGatewayError(raw)), headers });
}
