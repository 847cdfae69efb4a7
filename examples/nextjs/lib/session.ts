// The signed-in user, from the app's session cookie. A stand-in for the real app's sessions
// (Supabase auth in ViewBait): a cookie naming the user and tier, signed with SESSION_SECRET so the
// browser cannot change either. What matters for the gateway is where the values come from: the
// server's session, never the request body.
import "server-only";
import { createHmac, timingSafeEqual } from "node:crypto";
import { cookies } from "next/headers";

export const SESSION_COOKIE = "viewbait_session";
export const TIERS = ["free", "starter", "advanced", "pro"] as const;
export type Tier = (typeof TIERS)[number];

/** Who is signed in. */
export interface Session {
  userId: string;
  tier: Tier;
}

function secret(): string {
  const value = process.env["SESSION_SECRET"];
  if (value === undefined || value.length < 32) {
    throw new Error("SESSION_SECRET must be set to at least 32 characters (it signs the session cookie)");
  }
  return value;
}

function sign(payload: string): string {
  return createHmac("sha256", secret()).update(payload).digest("base64url");
}

/** A user id the gateway accepts in a header: printable ASCII, no spaces, at most 64 characters. */
export function validUserId(value: string): boolean {
  return /^[A-Za-z0-9._@-]{1,64}$/.test(value);
}

export function isTier(value: string): value is Tier {
  return (TIERS as readonly string[]).includes(value);
}

/** The cookie value of a session. */
export function encodeSession(session: Session): string {
  const payload = Buffer.from(JSON.stringify(session)).toString("base64url");
  return `${payload}.${sign(payload)}`;
}

function decodeSession(value: string): Session | null {
  const [payload, signature, ...rest] = value.split(".");
  if (payload === undefined || signature === undefined || rest.length > 0) return null;
  const expected = Buffer.from(sign(payload));
  const given = Buffer.from(signature);
  if (expected.length !== given.length || !timingSafeEqual(expected, given)) return null;
  const parsed = JSON.parse(Buffer.from(payload, "base64url").toString("utf8")) as Partial<Session>;
  const { userId, tier } = parsed;
  if (typeof userId !== "string" || !validUserId(userId) || typeof tier !== "string" || !isTier(tier)) return null;
  return { userId, tier };
}

/** The session of the current request, or null when nobody is signed in. */
export async function currentSession(): Promise<Session | null> {
  const value = (await cookies()).get(SESSION_COOKIE)?.value;
  return value === undefined ? null : decodeSession(value);
}

/** The answer of an API route called without a session. */
export function signInFirst(): Response {
  return Response.json(
    { problem: { title: "Please sign in", message: "Your session has ended. Sign in again." } },
    { status: 401 },
  );
}
