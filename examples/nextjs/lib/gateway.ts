// The gateway client of this server process. The service token lives here, in the server's
// environment, and never reaches the browser; each call says which user it acts for (from the
// session) with `actingAs`.
import "server-only";
import { actingAs, createGatewayClient, type GatewayClients } from "@viewbait/gateway-client";
import type { Session } from "./session";

function required(name: string): string {
  const value = process.env[name];
  if (value === undefined || value === "") throw new Error(`${name} must be set (see the example's README)`);
  return value;
}

// One client per process: it keeps one HTTP/2 session to the gateway. Kept on globalThis so that
// module reloads in `next dev` do not open a new session each time.
const shared = globalThis as typeof globalThis & { viewbaitGateway?: GatewayClients };

/** The process's gateway clients, created on first use. */
export function gateway(): GatewayClients {
  shared.viewbaitGateway ??= createGatewayClient({
    baseUrl: required("VIEWBAIT_GATEWAY_URL"),
    token: required("VIEWBAIT_SERVICE_TOKEN"),
  });
  return shared.viewbaitGateway;
}

/** Call options acting for the signed-in user: `actingAs` headers, and the signal if given. */
export function asUser(
  session: Session,
  signal?: AbortSignal,
): { headers: Array<[string, string]>; signal?: AbortSignal } {
  const headers = actingAs(session.userId, session.tier);
  return signal === undefined ? { headers } : { headers, signal };
}
