/**
 * The headers (gRPC metadata) that carry a caller's credentials to the gateway.
 *
 * Two ways to authenticate, both as `authorization: Bearer <token>`: a user's Supabase JWT (the
 * gateway reads user id and tier from it), or the backend's service token together with the user
 * id and tier the call acts for, in `x-viewbait-user-id` and `x-viewbait-tier`.
 */

/** Who a client calls as. */
export interface Credentials {
  /** A user's JWT, or the trusted backend's service token. Omit to send no credentials. */
  token?: string | undefined;
  /** With a service token: the user the call acts for. */
  userId?: string | undefined;
  /** With a service token: that user's tier ("free", "starter", "advanced", "pro"). */
  tier?: string | undefined;
}

export const AUTHORIZATION_HEADER = "authorization";
export const USER_ID_HEADER = "x-viewbait-user-id";
export const TIER_HEADER = "x-viewbait-tier";
export const REQUEST_ID_HEADER = "x-request-id";

/**
 * The header pairs for a set of credentials, in the order they are sent.
 *
 * Throws for a user id or tier without a token (the gateway would ignore them, hiding a
 * configuration mistake) and for values HTTP/2 headers cannot carry.
 */
export function credentialHeaders(credentials: Credentials): Array<[string, string]> {
  const { token, userId, tier } = credentials;
  if (token === undefined) {
    if (userId !== undefined || tier !== undefined) {
      throw new TypeError("userId and tier are only sent with a (service) token");
    }
    return [];
  }
  const pairs: Array<[string, string]> = [[AUTHORIZATION_HEADER, `Bearer ${checked("token", token)}`]];
  if (userId !== undefined) pairs.push([USER_ID_HEADER, checked("userId", userId)]);
  if (tier !== undefined) pairs.push([TIER_HEADER, checked("tier", tier)]);
  return pairs;
}

/**
 * Per-call headers for a backend holding a service token: the call acts for this user and tier.
 * Pass them as `CallOptions.headers`; they replace the client's default user and tier.
 */
export function actingAs(userId: string, tier: string): Array<[string, string]> {
  return [
    [USER_ID_HEADER, checked("userId", userId)],
    [TIER_HEADER, checked("tier", tier)],
  ];
}

// Printable ASCII without surrounding spaces: anything else is either refused by HTTP/2 when the
// call is made (with a vaguer error) or, for CR/LF, an attempt to smuggle another header.
const headerValue = /^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$/;

function checked(name: string, value: string): string {
  if (!headerValue.test(value)) {
    throw new TypeError(`${name} must be non-empty printable ASCII without surrounding spaces`);
  }
  return value;
}
