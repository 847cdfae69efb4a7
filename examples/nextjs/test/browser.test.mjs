// @ts-check
// End to end in a real browser: the gateway (`python -m gateway serve`, local mode, its offline
// emulator slowed down so progress is visible), this app built (`next build`, run first by
// `npm run test:browser`) and started (`next start`), and Debian's Chromium driven by
// playwright-core (no browser download). A person signs in, types a prompt, presses Generate,
// watches the progress and sees the thumbnails; reloads mid-job; cancels; hits the rate limit;
// uploads a thumbnail for its heatmap. Screenshots go to test-output/.
//
// Environment: PYTHON (default python3) must import the gateway; CHROMIUM (default
// /usr/bin/chromium).
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { after, before, test } from "node:test";
import { chromium } from "playwright-core";

const APP = dirname(dirname(fileURLToPath(import.meta.url)));
const ROOT = dirname(dirname(APP));
const OUTPUT = join(APP, "test-output");
const PYTHON = process.env["PYTHON"] ?? "python3";
const CHROMIUM = process.env["CHROMIUM"] ?? "/usr/bin/chromium";
const START_TIMEOUT_MS = 120_000;
const WAIT_MS = 60_000;
/** The rate limit of the test's free tier: one GenerateThumbnail submit per ten minutes. */
const FREE_GENERATE_LIMIT = { rate: 1, period_s: 600, burst: 1 };
const LIFE = { queued: 0, running: 1, succeeded: 2, failed: 2, cancelled: 2 };

/**
 * One SSE `job` event the page received: its id (the sequence) and data.
 * @typedef {{ jobId: string, state: keyof typeof LIFE, fraction: number, stage: string, thumbnails: unknown[] }} JobEvent
 * @typedef {{ id: string, data: JobEvent }} Received
 */

/** @type {{ url: string, emulatorUrl: string, stop(): Promise<void>, output(): string } | undefined} */
let gateway;
/** @type {{ url: string, port: number, stop(): Promise<void>, kill(): Promise<void>, output(): string } | undefined} */
let app;
/** @type {import("playwright-core").BrowserContext | undefined} */
let browser;
let shot = 0;
/** The browser's fresh profile directory, removed at the end. */
let profile = "";

/** A free TCP port on loopback. */
async function freePort() {
  const server = createServer();
  await new Promise((done) => server.listen(0, "127.0.0.1", () => done(undefined)));
  const address = server.address();
  await new Promise((done) => server.close(() => done(undefined)));
  assert.ok(address !== null && typeof address === "object");
  return address.port;
}

/**
 * Starts a child process, keeping its last output; `ready()` resolves when it is up.
 * @param {string} command @param {string[]} args @param {{ cwd: string, env: NodeJS.ProcessEnv }} options
 */
function start(command, args, options) {
  const child = spawn(command, args, { ...options, stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  /** @param {Buffer} chunk */
  const keep = (chunk) => {
    output = (output + chunk.toString()).slice(-20_000);
  };
  child.stdout.on("data", keep);
  child.stderr.on("data", keep);
  const exited = new Promise((done) => child.once("exit", () => done(undefined)));
  return {
    child,
    output: () => output,
    running: () => child.exitCode === null && child.signalCode === null,
    /** SIGKILL: the process dies at once, its connections broken. */
    async kill() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGKILL");
      await exited;
    },
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGTERM");
      const stopped = await Promise.race([exited.then(() => true), sleep(20_000, false, { ref: false })]);
      if (!stopped) {
        child.kill("SIGKILL");
        await exited;
      }
    },
  };
}

/** Waits until `check()` holds, failing with `what` and the process output after the timeout. */
async function until(/** @type {() => Promise<boolean> | boolean} */ check, /** @type {() => string} */ what) {
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`gave up waiting: ${what()}`);
    await sleep(100);
  }
}

async function startGateway() {
  const scratch = mkdtempSync(join(tmpdir(), "viewbait-web-gateway-"));
  const readyFile = join(scratch, "ready.json");
  const env = Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith("VIEWBAIT_")));
  const proc = start(PYTHON, ["-m", "gateway", "serve"], {
    cwd: ROOT,
    env: {
      ...env,
      // Local mode: loopback, in-memory store and jobs, the emulator, the dev service token.
      VIEWBAIT_SERVER__PORT: "0",
      VIEWBAIT_SERVER__READY_FILE: readyFile,
      VIEWBAIT_SERVER__LOG_FORMAT: "text",
      // Slow enough that a person (and this test) sees the progress move.
      VIEWBAIT_EMULATOR__LATENCY_S: "1",
      VIEWBAIT_EMULATOR__LATENCY_JITTER_S: "1.5",
      VIEWBAIT_POLICIES: JSON.stringify({
        generate_thumbnail: { limits: { free: { admission: FREE_GENERATE_LIMIT } } },
      }),
      // One user whose daily budget no image fits.
      VIEWBAIT_BUDGETS__USERS: JSON.stringify({ "web-broke": { day_usd: 0.000001 } }),
    },
  });
  await until(
    () => {
      if (!proc.running()) throw new Error(`the gateway exited:\n${proc.output()}`);
      return existsSync(readyFile);
    },
    () => `the gateway did not start:\n${proc.output()}`,
  );
  const ready = JSON.parse(readFileSync(readyFile, "utf8"));
  return {
    url: `http://127.0.0.1:${ready.port}`,
    emulatorUrl: String(ready.emulator_url),
    output: proc.output,
    async stop() {
      await proc.stop();
      rmSync(scratch, { recursive: true, force: true });
    },
  };
}

/** `next start` on `port` (a free one by default), calling the gateway with the local mode's dev service token. */
async function startApp(/** @type {string} */ gatewayUrl, port = 0) {
  port ||= await freePort();
  const proc = start(
    process.execPath,
    [join(APP, "node_modules", "next", "dist", "bin", "next"), "start", "-H", "127.0.0.1", "-p", String(port)],
    {
      cwd: APP,
      env: {
        ...process.env,
        NODE_ENV: "production",
        NEXT_TELEMETRY_DISABLED: "1",
        VIEWBAIT_GATEWAY_URL: gatewayUrl,
        VIEWBAIT_SERVICE_TOKEN: "local-dev-service-token",
        SESSION_SECRET: "browser-test-session-secret-of-32-characters",
      },
    },
  );
  const url = `http://127.0.0.1:${port}`;
  await until(
    async () => {
      if (!proc.running()) throw new Error(`next start exited:\n${proc.output()}`);
      return fetch(`${url}/signin`).then(
        (r) => r.ok,
        () => false,
      );
    },
    () => `next start did not answer:\n${proc.output()}`,
  );
  return { url, port, output: proc.output, stop: () => proc.stop(), kill: () => proc.kill() };
}

async function setKnobs(/** @type {Record<string, unknown>} */ knobs) {
  assert.ok(gateway);
  const response = await fetch(`${gateway.emulatorUrl}/_emulator/knobs`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(knobs),
  });
  assert.ok(response.ok, `knobs: ${response.status} ${await response.text()}`);
}

async function screenshot(/** @type {import("playwright-core").Page} */ page, /** @type {string} */ name) {
  shot += 1;
  await page.screenshot({ path: join(OUTPUT, `${String(shot).padStart(2, "0")}-${name}.png`), fullPage: true });
}

/** A new page of the shared browser, recording every SSE `job` event it receives. */
async function newPage() {
  assert.ok(browser);
  const page = await browser.newPage();
  await page.addInitScript(() => {
    const Original = window.EventSource;
    /** @type {any} */ (window).received = [];
    window.EventSource = class extends Original {
      constructor(/** @type {string | URL} */ url, /** @type {EventSourceInit | undefined} */ init) {
        super(url, init);
        this.addEventListener("job", (event) => {
          /** @type {any} */ (window).received.push({ id: event.lastEventId, data: JSON.parse(event.data) });
        });
      }
    };
  });
  return page;
}

/** @returns {Promise<Received[]>} */
const received = (/** @type {import("playwright-core").Page} */ page) =>
  page.evaluate(() => /** @type {any} */ (window).received);

async function signIn(
  /** @type {import("playwright-core").Page} */ page,
  /** @type {string} */ user,
  /** @type {string} */ tier,
) {
  assert.ok(app);
  await page.goto(`${app.url}/signin`);
  await page.getByLabel("User").fill(user);
  await page.getByLabel("Plan").selectOption(tier);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL(`${app.url}/`);
  await page.getByText(`${user} · ${tier}`).waitFor();
}

async function generate(
  /** @type {import("playwright-core").Page} */ page,
  /** @type {string} */ prompt,
  /** @type {number} */ images,
) {
  await page.getByLabel("Prompt").fill(prompt);
  await page.getByLabel("Images").selectOption(String(images));
  await page.getByRole("button", { name: "Generate" }).click();
}

const job = (/** @type {import("playwright-core").Page} */ page) => page.locator("section[aria-label='Job']");

async function waitForState(/** @type {import("playwright-core").Page} */ page, /** @type {string} */ state) {
  await page.waitForSelector(`section[aria-label='Job'][data-state='${state}']`, { timeout: WAIT_MS });
}

/** The decoded sizes of the job's images (0 for one the browser could not decode). */
const decodedWidths = (/** @type {import("playwright-core").Page} */ page) =>
  job(page)
    .locator("img")
    .evaluateAll((images) =>
      images.map((img) =>
        /** @type {HTMLImageElement} */ (img).complete ? /** @type {HTMLImageElement} */ (img).naturalWidth : 0,
      ),
    );

/** Each event once, in order; states follow a job's life; progress never goes back. */
function assertOneLife(/** @type {Received[]} */ events, /** @type {string} */ final) {
  const ids = events.map((e) => Number(e.id));
  assert.deepEqual(
    ids,
    [...new Set(ids)].sort((a, b) => a - b),
    `events once and in order: ${ids}`,
  );
  const stages = events.map((e) => LIFE[e.data.state]);
  assert.deepEqual(stages, [...stages].sort(), `states in life order: ${events.map((e) => e.data.state)}`);
  const fractions = events.map((e) => e.data.fraction);
  assert.deepEqual(
    fractions,
    [...fractions].sort((a, b) => a - b),
    `progress never goes back: ${fractions}`,
  );
  assert.equal(events.at(-1)?.data.state, final);
}

before(async () => {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install chromium (make install does)`);
  assert.ok(
    existsSync(join(APP, ".next", "BUILD_ID")),
    "build the app first: npm run build (npm run test:browser does)",
  );
  rmSync(OUTPUT, { recursive: true, force: true });
  mkdirSync(OUTPUT, { recursive: true });
  gateway = await startGateway();
  app = await startApp(gateway.url);
  profile = mkdtempSync(join(tmpdir(), "viewbait-web-chromium-"));
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1100, height: 900 },
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  browser.setDefaultTimeout(WAIT_MS);
});

after(async () => {
  await browser?.close();
  // Chromium's helper processes may still be letting go of files for a moment.
  if (profile) rmSync(profile, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
  await app?.stop();
  await gateway?.stop();
});

test("a prompt becomes thumbnails, with the progress moving on the way", async (t) => {
  const page = await newPage();
  t.after(() => page.close());
  await setKnobs({ latency_s: 1, latency_jitter_s: 1.5, seed: 7 });
  await signIn(page, "web-pro", "pro");

  await generate(page, "I ate the spiciest noodles on earth", 3);
  // Mid-way: the bar is part full and the stage says how far the images are.
  await page.waitForFunction(
    () => {
      const bar = document.querySelector("progress");
      return bar !== null && bar.value > 0 && bar.value < 1;
    },
    undefined,
    { timeout: WAIT_MS },
  );
  const midway = await page.getByTestId("stage").textContent();
  await screenshot(page, "generating");
  await waitForState(page, "succeeded");
  await screenshot(page, "thumbnails");

  assert.match(midway ?? "", /of 3 images ready|generating image \d of 3/);
  const events = await received(page);
  assertOneLife(events, "succeeded");
  assert.ok(
    events.some((e) => e.data.state === "running" && e.data.fraction > 0 && e.data.fraction < 1),
    "a progress event mid-way",
  );
  assert.deepEqual(new Set(events.map((e) => e.data.jobId)).size, 1);
  assert.equal(await page.getByTestId("stage").textContent(), "Done · 100%");
  const widths = await decodedWidths(page);
  assert.equal(widths.length, 3);
  assert.ok(
    widths.every((w) => w > 0),
    `every image decoded: ${widths}`,
  );
});

test("a reload mid-job picks the job up where it is and follows it to the end", async (t) => {
  const page = await newPage();
  t.after(() => page.close());
  await setKnobs({ latency_s: 4, latency_jitter_s: 2, seed: 11 });
  await signIn(page, "web-reload", "pro");

  await generate(page, "A treehouse at dusk", 2);
  await waitForState(page, "running");
  const jobId = await job(page).getAttribute("data-job-id");
  const before = await received(page);
  await page.reload();
  await waitForState(page, "succeeded");
  await screenshot(page, "after-reload");

  assert.ok(jobId);
  assert.equal(new URL(page.url()).searchParams.get("job"), jobId, "the job is in the address");
  assert.equal(await job(page).getAttribute("data-job-id"), jobId, "the same job after the reload");
  const after = await received(page);
  assertOneLife(after, "succeeded");
  assert.ok(
    Number(after[0]?.id) >= Number(before.at(-1)?.id),
    "the stream starts at the job's current state, not from scratch",
  );
  const widths = await decodedWidths(page);
  assert.equal(widths.length, 2);
  assert.ok(
    widths.every((w) => w > 0),
    `every image decoded: ${widths}`,
  );

  // A reconnect (what the EventSource does after a broken connection) resumes after the last
  // event it saw: only what came after, then the end.
  assert.ok(app && browser);
  const cookie = (await browser.cookies(app.url)).map((c) => `${c.name}=${c.value}`).join("; ");
  const relay = async (/** @type {string | undefined} */ lastEventId) => {
    const headers = { cookie, ...(lastEventId === undefined ? {} : { "last-event-id": lastEventId }) };
    const text = await (await fetch(`${app?.url}/api/jobs/${jobId}/events`, { headers })).text();
    return [...text.matchAll(/^id: (\d+)$/gm)].map((m) => Number(m[1]));
  };
  const all = await relay(undefined);
  const last = all.at(-1);
  assert.ok(last !== undefined && last > 0, `a finished job's stream: ${all}`);
  assert.deepEqual(await relay(String(last)), [], "nothing after the last event");
  assert.deepEqual(await relay(String(last - 1)), [last], "only the events after Last-Event-ID");
});

test("when the app's process dies mid-job, the browser reconnects and resumes after the last event", async (t) => {
  const page = await newPage();
  t.after(() => page.close());
  // One image, slow: nothing changes while the app is down, so a stream that began again from
  // the job's current state (not after Last-Event-ID) would repeat the last event. (SIGTERM would
  // not do: `next start` finishes the open streams before it exits.)
  await setKnobs({ latency_s: 8, latency_jitter_s: 0 });
  await signIn(page, "web-restart", "pro");

  await generate(page, "A lighthouse in a storm", 1);
  await waitForState(page, "running");
  const before = await received(page);
  assert.ok(app && gateway);
  await app.kill();
  app = await startApp(gateway.url, app.port);
  await waitForState(page, "succeeded");
  await screenshot(page, "after-app-restart");

  const events = await received(page);
  assert.ok(events.length > before.length, "events came after the restart");
  assert.deepEqual(events.slice(0, before.length), before);
  assertOneLife(events, "succeeded");
  const widths = await decodedWidths(page);
  assert.equal(widths.length, 1);
  assert.ok(
    widths.every((w) => w > 0),
    `the image decoded: ${widths}`,
  );
});

test("a submit whose answer is lost is sent again with the click's key and joins the job it queued", async (t) => {
  const page = await newPage();
  t.after(() => page.close());
  await setKnobs({ latency_s: 0.5, latency_jitter_s: 0 });
  await signIn(page, "web-retry", "pro");
  /** @type {{ idempotencyKey: string }[]} */
  const sent = [];
  /** @type {string[]} */
  const queued = [];
  await page.route("**/api/jobs", async (route) => {
    sent.push(route.request().postDataJSON());
    if (sent.length > 1) return route.continue();
    // The first one reaches the app and queues a job; its answer never reaches the page.
    const answer = await route.fetch();
    queued.push((await answer.json()).jobId);
    await route.abort("connectionreset");
  });

  await generate(page, "Lost in the mail", 1);
  await waitForState(page, "succeeded");

  assert.equal(sent.length, 2, "sent again once");
  assert.equal(sent[1]?.idempotencyKey, sent[0]?.idempotencyKey, "with the same key");
  assert.equal(await job(page).getAttribute("data-job-id"), queued[0], "the job the first attempt queued");
});

test("a job cancelled from the page ends cancelled", async (t) => {
  const page = await newPage();
  t.after(() => page.close());
  await setKnobs({ latency_s: 30, latency_jitter_s: 0 });
  await signIn(page, "web-cancel", "pro");

  await generate(page, "A very slow rocket launch", 1);
  await page.getByRole("button", { name: "Cancel" }).click();
  await waitForState(page, "cancelled");
  await screenshot(page, "cancelled");

  assert.equal(await page.getByTestId("stage").textContent(), "Cancelled · 0%");
  assertOneLife(await received(page), "cancelled");
  assert.equal(await job(page).locator("img").count(), 0);
  await setKnobs({ latency_s: 0, latency_jitter_s: 0 });
});

test("mistakes and limits are explained in words, not codes", async (t) => {
  const page = await newPage();
  t.after(() => page.close());
  await setKnobs({ latency_s: 0, latency_jitter_s: 0 });
  await signIn(page, "web-mistaken", "pro");
  await generate(page, "", 1);
  const invalid = await page.locator(".problem[role=alert]").textContent();
  await screenshot(page, "invalid-input");

  // The free tier here may submit once per ten minutes (FREE_GENERATE_LIMIT).
  await signIn(page, "web-free", "free");
  await generate(page, "My first video", 1);
  await waitForState(page, "succeeded");
  await generate(page, "My second video", 1);
  await page.locator(".problem[role=alert]").getByText("Slow down a little").waitFor();
  const limited = await page.locator(".problem[role=alert]").textContent();
  await screenshot(page, "rate-limited");

  assert.match(invalid ?? "", /Please check your input/);
  assert.match(invalid ?? "", /prompt/i);
  assert.match(limited ?? "", /more requests than your plan allows/);
  assert.match(limited ?? "", /try again in (\d+) minutes?/, "says when to come back");
  for (const text of [invalid, limited]) {
    assert.doesNotMatch(text ?? "", /RESOURCE_EXHAUSTED|RATE_LIMITED|INVALID_ARGUMENT|\[\w+\]/, "no raw codes");
  }
  assert.ok(await page.getByRole("button", { name: "Generate" }).isDisabled(), "Generate waits for the limit");
});

test("a spent budget is explained with when it renews", async (t) => {
  const page = await newPage();
  t.after(() => page.close());
  await setKnobs({ latency_s: 0, latency_jitter_s: 0 });
  await signIn(page, "web-broke", "pro");

  await generate(page, "An expensive idea", 1);
  await page.locator(".problem[role=alert]").getByText("Spending limit reached").waitFor();
  const spent = await page.locator(".problem[role=alert]").textContent();
  await screenshot(page, "budget-exceeded");

  assert.match(spent ?? "", /AI allowance of your plan\. It renews .*UTC.*; upgrading your plan raises it/);
  assert.doesNotMatch(spent ?? "", /BUDGET_EXCEEDED|RESOURCE_EXHAUSTED|\[\w+\]/, "no raw codes");
});

test("an uploaded thumbnail shows its attention heatmap over it", async (t) => {
  const page = await newPage();
  t.after(() => page.close());
  await signIn(page, "web-heatmap", "pro");
  assert.ok(app);

  await page.goto(`${app.url}/heatmap`);
  await page.getByLabel("Thumbnail").setInputFiles(join(ROOT, "docs", "examples", "thumbnail.png"));
  await page.getByRole("button", { name: "Show attention" }).click();
  const heat = page.getByAltText("Attention heatmap");
  await heat.waitFor();
  await page.waitForFunction(() =>
    [...document.querySelectorAll(".overlay img")].every((img) => /** @type {HTMLImageElement} */ (img).complete),
  );
  await screenshot(page, "heatmap");

  const widths = await page
    .locator(".overlay img")
    .evaluateAll((images) => images.map((img) => /** @type {HTMLImageElement} */ (img).naturalWidth));
  assert.equal(widths.length, 2);
  assert.ok(
    widths.every((w) => w > 0),
    `thumbnail and heatmap decoded: ${widths}`,
  );
  assert.ok((await page.locator(".overlay .region").count()) > 0, "the regions are labelled");
});
