/** TLS to the gateway: which CA to trust, the client certificate of mutual TLS, the server name. */

import type { SecureClientSessionOptions } from "node:http2";

/**
 * How the transport secures its HTTP/2 session; needs an "https://" `baseUrl`. Everything is
 * optional: `{}` is TLS verified against Node's bundled root certificates.
 */
export interface TlsOptions {
  /** PEM CA certificate(s) to trust instead of Node's roots, e.g. a private CA's. */
  ca?: string | Buffer | undefined;
  /** PEM client certificate (chain) for a gateway with mutual TLS; goes with `key`. */
  cert?: string | Buffer | undefined;
  /** PEM private key of `cert`. */
  key?: string | Buffer | undefined;
  /**
   * The name the gateway's certificate must carry when it differs from the `baseUrl`'s host
   * (e.g. dialling an IP address); also sent as SNI.
   */
  serverName?: string | undefined;
}

/**
 * The `http2.connect` options of `tls` for `baseUrl` (undefined without `tls`). Throws for TLS
 * options on a cleartext "http://" URL (they would be ignored, and credentials sent readable)
 * and for a client certificate without its key or the other way round.
 */
export function tlsSessionOptions(
  baseUrl: string,
  tls: TlsOptions | undefined,
): SecureClientSessionOptions | undefined {
  if (tls === undefined) return undefined;
  if (new URL(baseUrl).protocol !== "https:") {
    throw new TypeError(`tls needs an "https://" baseUrl, not ${JSON.stringify(baseUrl)}`);
  }
  if ((tls.cert === undefined) !== (tls.key === undefined)) {
    throw new TypeError("tls.cert and tls.key go together: give the client certificate and its key, or neither");
  }
  if (tls.serverName !== undefined && tls.serverName.trim() === "") {
    throw new TypeError("tls.serverName must not be empty");
  }
  const options: SecureClientSessionOptions = {};
  if (tls.ca !== undefined) options.ca = tls.ca;
  if (tls.cert !== undefined) options.cert = tls.cert;
  if (tls.key !== undefined) options.key = tls.key;
  if (tls.serverName !== undefined) options.servername = tls.serverName;
  return options;
}
