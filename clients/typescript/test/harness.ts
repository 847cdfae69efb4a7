// What the end-to-end tests share: the real gateway started as a subprocess (`python -m gateway
// serve` or `worker`, offline Gemini emulator inside) on loopback, its emulator's knobs, user JWTs,
// and a fresh PostgreSQL schema. Set PYTHON to choose the interpreter (default "python3"); it must
// have the gateway and its Python client installed.
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { randomBytes, createHmac } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";

export const SERVICE_TOKEN = "test-service-token";
export const JWT_SECRET = "e2e-test-jwt-secret-of-at-least-32-bytes";
export const CALL_TIMEOUT_MS = 60_000;
const START_TIMEOUT_MS = 120_000;
const STOP_TIMEOUT_MS = 30_000;
const PYTHON = process.env["PYTHON"] ?? "python3";
/** The PostgreSQL database of the tests, as in the Python suite. */
export const DATABASE_URL = process.env["GATEWAY_TEST_DATABASE_URL"] ?? "postgresql://postgres@127.0.0.1:5432/test";

/** The repository root: the first ancestor holding the gateway's pyproject.toml. */
export function repositoryRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!(existsSync(join(dir, "pyproject.toml")) && existsSync(join(dir, "gateway")))) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error("no repository root above " + fileURLToPath(import.meta.url));
    dir = parent;
  }
  return dir;
}

export const root = repositoryRoot();
/** A reason to skip the end-to-end tests, or false. */
export const serverMissing = existsSync(join(root, "gateway", "server.py"))
  ? false
  : "gateway/server.py does not exist yet: the end-to-end test starts the real gateway";

/** An HS256 user JWT shaped like Supabase's. */
export function userJwt(
  claims: { sub: string; tier?: string; aud?: string; expiresIn?: number },
  secret = JWT_SECRET,
): string {
  const now = Math.floor(Date.now() / 1000);
  const encode = (value: object) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const payload = {
    sub: claims.sub,
    aud: claims.aud ?? "authenticated",
    role: "authenticated",
    iat: now,
    exp: now + (claims.expiresIn ?? 600),
    ...(claims.tier === undefined ? {} : { app_metadata: { tier: claims.tier } }),
  };
  const unsigned = `${encode({ alg: "HS256", typ: "JWT" })}.${encode(payload)}`;
  return `${unsigned}.${createHmac("sha256", secret).update(unsigned).digest("base64url")}`;
}

/** A running gateway subprocess. */
export interface GatewayProcess {
  /** "http://127.0.0.1:<port>", "https://..." when it serves TLS (a worker has no listener: port 0). */
  baseUrl: string;
  port: number;
  /** Its in-process emulator's base URL (knobs at `/_emulator/...`). */
  emulatorUrl: string;
  /** The last lines it printed. */
  output(): string;
  /** SIGTERM (graceful: health NOT_SERVING, drain, jobs handed back), then waits for the exit. */
  stop(): Promise<void>;
}

/**
 * Starts `python -m gateway <command>` from the repository root on loopback, authenticating the
 * service token and JWTs above; `env` adds or overrides `VIEWBAIT_*` settings. Resolves once it
 * wrote its ready file.
 */
export async function startGateway(
  options: { command?: "serve" | "worker"; port?: number; env?: Record<string, string> } = {},
): Promise<GatewayProcess> {
  const scratch = mkdtempSync(join(tmpdir(), "viewbait-e2e-"));
  const readyFile = join(scratch, "ready.json");
  const child = spawn(PYTHON, ["-m", "gateway", options.command ?? "serve"], {
    cwd: root,
    env: {
      ...process.env,
      VIEWBAIT_SERVER__HOST: "127.0.0.1",
      VIEWBAIT_SERVER__PORT: String(options.port ?? 0),
      VIEWBAIT_SERVER__READY_FILE: readyFile,
      VIEWBAIT_SERVER__LOG_FORMAT: "text",
      VIEWBAIT_AUTH__SERVICE_TOKEN: SERVICE_TOKEN,
      VIEWBAIT_AUTH__JWT_SECRET: JWT_SECRET,
      ...options.env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  const keep = (chunk: Buffer) => {
    output = (output + chunk.toString()).slice(-8000);
  };
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);
  const exited = new Promise<void>((done) => child.once("exit", () => done()));

  try {
    const deadline = Date.now() + START_TIMEOUT_MS;
    while (!existsSync(readyFile)) {
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new Error(`the gateway exited (${child.exitCode ?? child.signalCode}) before serving:\n${output}`);
      }
      if (Date.now() > deadline) throw new Error(`the gateway did not start in time:\n${output}`);
      await sleep(50);
    }
    const ready = JSON.parse(readFileSync(readyFile, "utf8")) as { port: number; emulator_url: string | null };
    const scheme = options.env?.["VIEWBAIT_TLS__CERT_FILE"] === undefined ? "http" : "https";
    return {
      baseUrl: `${scheme}://127.0.0.1:${ready.port}`,
      port: ready.port,
      emulatorUrl: ready.emulator_url ?? "",
      output: () => output,
      stop: async () => {
        await terminate(child, exited);
        rmSync(scratch, { recursive: true, force: true });
      },
    };
  } catch (error) {
    await terminate(child, exited);
    rmSync(scratch, { recursive: true, force: true });
    throw error;
  }
}

async function terminate(child: ChildProcess, exited: Promise<void>): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill("SIGTERM");
  // Unreferenced: the pending timer of a stop that went well must not keep the test process alive.
  const patience = sleep(STOP_TIMEOUT_MS, false, { ref: false });
  const stopped = await Promise.race([exited.then(() => true), patience]);
  if (!stopped) {
    child.kill("SIGKILL");
    await exited;
  }
}

/** Changes the knobs of a gateway's emulator (`POST /_emulator/knobs`), e.g. `{ latency_s: 1 }`. */
export async function setKnobs(gateway: GatewayProcess, knobs: Record<string, unknown>): Promise<void> {
  await emulatorPost(gateway, "/_emulator/knobs", knobs);
}

/** Adds a fault rule to a gateway's emulator (`POST /_emulator/faults`), e.g. `{ kind: "safety", count: 1 }`. */
export async function injectFault(gateway: GatewayProcess, rule: Record<string, unknown>): Promise<void> {
  await emulatorPost(gateway, "/_emulator/faults", rule);
}

async function emulatorPost(gateway: GatewayProcess, path: string, body: unknown): Promise<void> {
  const response = await fetch(gateway.emulatorUrl + path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  if (!response.ok) throw new Error(`${path} answered ${response.status}: ${await response.text()}`);
}

/** A fresh schema name on the test database; `drop()` removes it (the gateway creates it). */
export function freshSchema(): { name: string; drop(): void } {
  const name = `viewbait_ts_test_${randomBytes(6).toString("hex")}`;
  return {
    name,
    drop() {
      const script = [
        "import asyncio, asyncpg, sys",
        "async def main():",
        "    conn = await asyncpg.connect(sys.argv[1], timeout=5)",
        "    try: await conn.execute(f'DROP SCHEMA IF EXISTS \"{sys.argv[2]}\" CASCADE')",
        "    finally: await conn.close()",
        "asyncio.run(main())",
      ].join("\n");
      const result = spawnSync(PYTHON, ["-c", script, DATABASE_URL, name], { encoding: "utf8" });
      if (result.status !== 0) throw new Error(`could not drop schema ${name}: ${result.stderr}`);
    },
  };
}

/** Certificates made for a test by `python -m gateway.testing.certificates`, as PEM file paths. */
export interface Certificates {
  /** The CA that signed the others. */
  ca: string;
  /** The gateway's certificate (for 127.0.0.1 and localhost) and key. */
  serverCert: string;
  serverKey: string;
  /** A client certificate and key for mutual TLS. */
  clientCert: string;
  clientKey: string;
  /** Deletes the files. */
  remove(): void;
}

/** A fresh CA with a server and a client certificate, in a temporary directory. */
export function makeCertificates(): Certificates {
  const dir = mkdtempSync(join(tmpdir(), "viewbait-tls-"));
  const result = spawnSync(PYTHON, ["-m", "gateway.testing.certificates", dir], { cwd: root, encoding: "utf8" });
  if (result.status !== 0) throw new Error(`could not make certificates: ${result.stderr}`);
  return {
    ca: join(dir, "ca.pem"),
    serverCert: join(dir, "server.pem"),
    serverKey: join(dir, "server.key"),
    clientCert: join(dir, "client.pem"),
    clientKey: join(dir, "client.key"),
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}
