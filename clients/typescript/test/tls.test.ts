// TLS end to end: the real gateway (`python -m gateway serve`) serving TLS, then mutual TLS, from
// certificates the test makes (`python -m gateway.testing.certificates`), called through this
// package's `tls` options; plus the options a transport refuses before dialling.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, before, describe, test } from "node:test";
import { createGatewayClient, decodeGatewayError, tlsSessionOptions, type TlsOptions } from "../src/index.js";
import {
  CALL_TIMEOUT_MS,
  SERVICE_TOKEN,
  makeCertificates,
  serverMissing,
  startGateway,
  type Certificates,
  type GatewayProcess,
} from "./harness.js";

/**
 * GetUsage as the backend acting for one user: that user's id, or "refused: <message>". A refused
 * handshake surfaces as the transport saw it (Internal for a certificate Node rejects, Canceled
 * for a session the gateway ends for want of a client certificate), so the message is checked.
 */
async function whoAmI(baseUrl: string, tls?: TlsOptions): Promise<string> {
  const { usage } = createGatewayClient({ baseUrl, tls, token: SERVICE_TOKEN, userId: "user-tls", tier: "pro" });
  try {
    return (await usage.getUsage({}, { timeoutMs: CALL_TIMEOUT_MS })).userId;
  } catch (error) {
    return `refused: ${decodeGatewayError(error).message}`;
  }
}

test("tls options need an https URL", () => {
  assert.throws(() => tlsSessionOptions("http://127.0.0.1:50051", {}), /needs an "https:\/\/" baseUrl/);
  assert.throws(
    () => createGatewayClient({ baseUrl: "http://127.0.0.1:50051", tls: { ca: "x" } }),
    /needs an "https:\/\/" baseUrl/,
  );
  assert.equal(tlsSessionOptions("http://127.0.0.1:50051", undefined), undefined);
});

test("a client certificate goes with its key", () => {
  assert.throws(() => tlsSessionOptions("https://gw:443", { cert: "c" }), /go together/);
  assert.throws(() => tlsSessionOptions("https://gw:443", { key: "k" }), /go together/);
  assert.throws(() => tlsSessionOptions("https://gw:443", { serverName: " " }), /must not be empty/);
  assert.deepEqual(tlsSessionOptions("https://gw:443", { ca: "a", cert: "c", key: "k", serverName: "gw.internal" }), {
    ca: "a",
    cert: "c",
    key: "k",
    servername: "gw.internal",
  });
});

describe("TLS end to end", { skip: serverMissing }, () => {
  let certificates: Certificates | undefined;
  /** Another CA's, which the gateway does not trust. */
  let stranger: Certificates | undefined;
  let tlsGateway: GatewayProcess | undefined;
  let mutualGateway: GatewayProcess | undefined;
  let ca = "";

  before(async () => {
    certificates = makeCertificates();
    stranger = makeCertificates();
    ca = readFileSync(certificates.ca, "utf8");
    const files = {
      VIEWBAIT_TLS__CERT_FILE: certificates.serverCert,
      VIEWBAIT_TLS__KEY_FILE: certificates.serverKey,
    };
    tlsGateway = await startGateway({ env: files });
    mutualGateway = await startGateway({ env: { ...files, VIEWBAIT_TLS__CLIENT_CA_FILE: certificates.ca } });
  });

  after(async () => {
    await tlsGateway?.stop();
    await mutualGateway?.stop();
    certificates?.remove();
    stranger?.remove();
  });

  test("a client trusting the gateway's CA calls over TLS", async () => {
    assert.ok(tlsGateway && tlsGateway.baseUrl.startsWith("https://"));
    const { gateway } = createGatewayClient({
      baseUrl: tlsGateway.baseUrl,
      tls: { ca },
      token: SERVICE_TOKEN,
      userId: "user-tls",
      tier: "pro",
    });

    const answer = await gateway.analyzeVideo({ videoId: "dQw4w9WgXcQ" }, { timeoutMs: CALL_TIMEOUT_MS });

    assert.equal(answer.outcome.case, "result");
    assert.ok(answer.outcome.value.summary.length > 0);
  });

  test("a client that does not trust the CA, or speaks cleartext, is refused", async () => {
    assert.ok(tlsGateway);
    // Node's bundled roots do not include the test CA.
    assert.match(await whoAmI(tlsGateway.baseUrl), /^refused: unable to verify the first certificate/);
    assert.match(await whoAmI(tlsGateway.baseUrl.replace("https:", "http:")), /^refused: /);
  });

  test("the server name is checked and can be overridden", async () => {
    assert.ok(tlsGateway);
    const port = tlsGateway.port;
    assert.equal(await whoAmI(`https://localhost:${port}`, { ca }), "user-tls");
    assert.equal(await whoAmI(tlsGateway.baseUrl, { ca, serverName: "localhost" }), "user-tls");
    assert.match(
      await whoAmI(tlsGateway.baseUrl, { ca, serverName: "gateway.example.com" }),
      /^refused: Hostname\/IP does not match certificate's altnames: Host: gateway.example.com/,
    );
  });

  test("mutual TLS: a client certificate of the CA is accepted, none or another CA's refused", async () => {
    assert.ok(mutualGateway && certificates && stranger);
    const pair = (of: Certificates) => ({ cert: readFileSync(of.clientCert), key: readFileSync(of.clientKey) });

    assert.equal(await whoAmI(mutualGateway.baseUrl, { ca, ...pair(certificates) }), "user-tls");
    assert.match(await whoAmI(mutualGateway.baseUrl, { ca }), /^refused: /);
    assert.match(await whoAmI(mutualGateway.baseUrl, { ca, ...pair(stranger) }), /^refused: /);
  });
});
