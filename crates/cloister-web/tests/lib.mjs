// Test tooling: the real `cloister` binary on a free port serving the built web client, and Debian's Chromium
// driven by playwright-core with fake camera, microphone and screen.
import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
export const webRoot = resolve(here, "..");
export const repoRoot = resolve(webRoot, "../..");
export const artifacts = join(webRoot, "test-artifacts");
mkdirSync(artifacts, { recursive: true });

function bin(name, env) {
  if (process.env[env]) return resolve(process.env[env]);
  const target = process.env.CARGO_TARGET_DIR ? resolve(repoRoot, process.env.CARGO_TARGET_DIR) : join(repoRoot, "target");
  return join(target, "debug", name);
}

export const cloisterBin = () => bin("cloister", "CLOISTER_BIN");
export const clientBin = () => bin("cloister-client", "CLOISTER_CLIENT_BIN");

/** Starts `cloister serve` on loopback with plain HTTP and a fresh data dir; resolves to { url, stop, log }. */
export async function startServer(extra = []) {
  const dir = mkdtempSync(join(tmpdir(), "cloister-web-test-"));
  const args = ["serve", "--plain-http", "--listen", "127.0.0.1:0", "--data-dir", dir, "--web-dir", join(webRoot, "dist"), ...extra];
  const child = spawn(cloisterBin(), args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn" } });
  let log = "";
  child.stderr.on("data", (d) => (log += d));
  const url = await new Promise((ok, fail) => {
    let out = "";
    const t = setTimeout(() => fail(new Error("the server did not start in 30 s:\n" + out + log)), 30_000);
    child.stdout.on("data", (d) => {
      out += d;
      const m = /listening on (http:\/\/\S+)/.exec(out);
      if (m) {
        clearTimeout(t);
        ok(m[1]);
      }
    });
    child.on("exit", (code) => fail(new Error(`the server exited (${code}):\n${out}${log}`)));
  });
  return {
    url,
    dir,
    log: () => log,
    async stop() {
      child.kill("SIGTERM");
      await new Promise((r) => (child.exitCode !== null ? r() : child.on("exit", r)));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

// Chromium keeps one value of a repeated `--disable-features` (the last), and Playwright passes its own list before
// the caller's arguments: a list of ours alone would silently switch Playwright's back on (its AI-mode and
// search-preconnect requests, its rendering fixes). So ours repeats Playwright's (1.65.1, as package-lock.json pins
// it; harness.test.mjs checks the browser got every one of them) and adds:
// - WebRtcHideLocalIpsWithMdns: loopback host candidates in the clear, so peers on 127.0.0.1 connect;
// - WebUIOmniboxPopup, WebUIOmniboxAimPopup: headless Chromium opens every page in a window of its own and loads
//   that window's omnibox popup, a WebUI app, in a renderer: 1.5-1.9 s of CPU per window (measured from the process's
//   utime+stime), which on a 2-core machine competes with the page under test. A student's browser has its windows
//   open already; the tests and the first-frame benchmark should not pay for a new one on every page.
const playwrightDisabledFeatures = [
  "AvoidUnnecessaryBeforeUnloadCheckSync",
  "DestroyProfileOnBrowserClose",
  "HttpsUpgrades",
  "HttpsFirstBalancedModeAutoEnable",
  "LensOverlay",
  "MediaRouter",
  "PaintHolding",
  "ThirdPartyStoragePartitioning",
  "AvoidCorsURLLoaderRestartOnRedirect",
  "TcpPortRandomizationWin",
  "OptimizationHints",
  "NetworkTimeServiceQuerying",
  "AimEnabled",
  "PreconnectToSearch",
  "msForceBrowserSignIn",
  "msEdgeUpdateLaunchServicesPreferredVersion",
];
export const ourDisabledFeatures = ["WebRtcHideLocalIpsWithMdns", "WebUIOmniboxPopup", "WebUIOmniboxAimPopup"];

export const chromiumArgs = [
  "--no-sandbox",
  "--headless=new",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--use-fake-device-for-media-stream",
  "--use-fake-ui-for-media-stream",
  "--auto-accept-this-tab-capture",
  "--autoplay-policy=no-user-gesture-required",
  "--allow-loopback-in-peer-connection",
  `--disable-features=${[...playwrightDisabledFeatures, ...ourDisabledFeatures].join(",")}`,
  "--disable-renderer-backgrounding",
  "--disable-background-timer-throttling",
  "--disable-backgrounding-occluded-windows",
];

/** Chromium with `chromiumArgs`, and any flags in CHROMIUM_EXTRA (space-separated: say a net log of a benchmark run,
 * `--log-net-log=/tmp/net.json --net-log-capture-mode=Everything`). */
export async function launch() {
  const extra = (process.env.CHROMIUM_EXTRA ?? "").split(" ").filter((a) => a !== "");
  return chromium.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", args: [...chromiumArgs, ...extra], headless: true });
}

/** A fresh browser context (its own storage: one person) with camera and microphone allowed. */
export async function person(browser, url, viewport = { width: 1280, height: 800 }) {
  const ctx = await browser.newContext({ viewport, baseURL: url, permissions: ["camera", "microphone", "clipboard-read", "clipboard-write"] });
  const page = await ctx.newPage();
  page.on("pageerror", (e) => console.error("[page error]", e.message));
  page.on("console", (m) => {
    if (m.type() === "error") console.error("[console]", m.text());
  });
  return { ctx, page };
}

let counter = 0;
export function uniqueEmail(tag) {
  counter += 1;
  return `${tag}-${process.pid}-${counter}-${Date.now()}@example.test`;
}

/** Signs up through the pages (recovery code shown once), then lands on the courses page. */
export async function signUp(page, tag) {
  const email = uniqueEmail(tag);
  const password = "correct horse battery " + tag;
  await page.goto("/#/signup");
  await page.getByLabel("Email").fill(email);
  await page.getByLabel(/^Password/).fill(password);
  await page.getByRole("button", { name: "Sign up" }).click();
  const code = await page.locator("#recovery-code").textContent({ timeout: 30_000 });
  await page.getByRole("link", { name: /continue/ }).click();
  await page.getByRole("heading", { name: "Courses", exact: true }).waitFor();
  return { email, password, code };
}

/** Polls `fn` until it returns a truthy value; fails with `what` after `ms`. */
export async function until(what, fn, ms = 30_000, every = 250) {
  const end = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what} (last: ${JSON.stringify(last?.message ?? last)})`);
    await new Promise((r) => setTimeout(r, every));
  }
}

export const decoded = (page) => page.evaluate(() => window.cloisterDebug?.decoded() ?? {});
export const debug = (page, what) => page.evaluate((w) => window.cloisterDebug?.[w]?.() ?? null, what);

/** Routes `page`'s WebSocket through `relay(frame, send)`: each frame from the server (parsed) reaches the page when,
 * and only if, `relay` calls `send`; the page's own frames go to the server unchanged. */
export async function relayServerFrames(page, relay) {
  await page.routeWebSocket(/\/api\/v1\/ws/, (ws) => {
    const srv = ws.connectToServer();
    srv.onMessage((m) => relay(JSON.parse(String(m)), () => ws.send(m)));
  });
}

/** On the courses page: the teacher creates a free course, schedules a session now and opens its live room. */
export async function teacherStartsSession(page, title) {
  await page.getByLabel("Title").fill(title);
  await page.getByRole("button", { name: "Create course" }).click();
  await page.getByRole("heading", { name: title }).waitFor();
  const course = /#\/course\/(\S+)/.exec(page.url())[1];
  await page.getByRole("button", { name: "Schedule" }).click();
  await page.getByRole("link", { name: "Start the live room" }).click();
  await until("the teacher's room is live", async () => (await debug(page, "status")) === "live");
  const session = /#\/live\/(\S+)/.exec(page.url())[1];
  return { course, session };
}

/** A signed-in student enrolls on the course page and joins its live session. */
export async function studentJoins(page, course) {
  await page.goto(`/#/course/${course}`);
  await page.getByRole("button", { name: /Enroll/ }).click();
  await page.getByText("You are enrolled.").waitFor();
  await page.getByRole("link", { name: "Join live" }).click();
}
