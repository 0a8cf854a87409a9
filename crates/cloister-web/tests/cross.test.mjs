// Across implementations, through the real server: the native client (webrtc-rs) publishes and a browser
// student decodes; a browser teacher publishes and the native client opens every frame it gets, also after the
// teacher reloads (the SFU stops all of the native connection's m-lines, then offers new ones).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { join } from "node:path";
import { clientBin, debug, decoded, launch, person, repoRoot, signUp, startServer, studentJoins, teacherStartsSession, uniqueEmail, until } from "./lib.mjs";

let server;
let browser;
const children = [];

before(async () => {
  server = await startServer();
  browser = await launch();
});

after(async () => {
  for (const c of children) c.kill("SIGTERM");
  await browser?.close();
  await server?.stop();
});

/** Runs the terminal participant once; resolves to its stdout. */
function client(email, args) {
  return new Promise((ok, fail) => {
    const c = spawn(clientBin(), ["--server", server.url, "--email", email, ...args], {
      env: { ...process.env, CLOISTER_PASSWORD: "native client password" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    let err = "";
    c.stdout.on("data", (d) => (out += d));
    c.stderr.on("data", (d) => (err += d));
    c.on("exit", (code) => (code === 0 ? ok(out) : fail(new Error(`cloister-client ${args[0]} exited ${code}: ${out}${err}`))));
  });
}

/** Starts a long-running participant; returns { lines, stats(), stop() }. */
function participant(email, args) {
  const c = spawn(clientBin(), ["--server", server.url, "--email", email, ...args], {
    env: { ...process.env, CLOISTER_PASSWORD: "native client password" },
    stdio: ["pipe", "pipe", "pipe"],
  });
  children.push(c);
  const lines = [];
  let buf = "";
  c.stdout.on("data", (d) => {
    buf += d;
    const parts = buf.split("\n");
    buf = parts.pop() ?? "";
    lines.push(...parts);
  });
  c.stderr.on("data", (d) => process.stderr.write(`[native] ${d}`));
  return {
    lines,
    stats() {
      const l = [...lines].reverse().find((x) => x.startsWith("media-stats "));
      return l ? JSON.parse(l.slice("media-stats ".length)) : null;
    },
    stop() {
      c.stdin.end("/quit\n");
    },
  };
}

test("the native client publishes and a browser student decodes its camera", { timeout: 180_000 }, async () => {
  const email = uniqueEmail("native-teacher");
  await client(email, ["signup"]);
  const made = await client(email, ["new-session", "--title", "Native to browser"]);
  const course = /course (\S+)/.exec(made)[1];
  const session = /session (\S+)/.exec(made)[1];
  const media = join(repoRoot, "tests/media");
  const host = participant(email, [
    "host", session, "--device", "native", "--name", "Native teacher",
    "--publish-camera", join(media, "camera-q.ivf"), "--publish-camera", join(media, "camera-h.ivf"), "--publish-camera", join(media, "camera-f.ivf"),
    "--publish-mic", join(media, "mic.ogg"), "--stats-every", "1",
  ]);
  await until("the native host publishes", async () => host.stats()?.publishing === true, 60_000);

  const s = await person(browser, server.url);
  await signUp(s.page, "browser-student");
  await studentJoins(s.page, course);
  await until("the browser decodes the native camera (framesDecoded > 30)", async () => ((await decoded(s.page))["teacher:camera"] ?? 0) > 30, 90_000);
  // The worker reports what it opened about once a second, so its count trails the decoder's.
  await until("every camera frame the browser decoded was opened by its transform", async () => {
    const video = (await debug(s.page, "receivers")).filter((r) => r.source === "camera");
    if (video.length > 0 && video.every((r) => r.opened > 30 && r.failed === 0)) return true;
    throw new Error(`frames opened: ${JSON.stringify(video)}`);
  }, 10_000);
  assert.equal(await debug(s.page, "indicator"), "End-to-end encrypted");
  host.stop();
  await s.ctx.close();
});

test("a browser teacher publishes and the native client opens the frames", { timeout: 180_000 }, async () => {
  const t = await person(browser, server.url);
  await signUp(t.page, "browser-teacher");
  const { course, session } = await teacherStartsSession(t.page, `Browser to native ${Date.now()}`);

  const email = uniqueEmail("native-student");
  await client(email, ["signup"]);
  await client(email, ["enroll", course]);
  const watcher = participant(email, ["join", session, "--device", "native", "--watch", "--stats-every", "1"]);
  const st = await until("the native client opens the browser's video and audio", async () => {
    const s = watcher.stats();
    return s !== null && s.video_opened > 60 && s.audio_opened > 30 ? s : null;
  }, 90_000);
  assert.equal(st.video_failed, 0, `no video frame failed to open: ${JSON.stringify(st)}`);
  assert.equal(st.audio_failed, 0, `no audio frame failed to open: ${JSON.stringify(st)}`);
  // The teacher reloads the page: its publish connection goes, so the SFU stops every m-line of the native client's
  // subscribe connection, then publishes again from a new epoch on new tracks, which the native client opens.
  await t.page.reload();
  await until("the native client opens the video of the reloaded teacher", async () => {
    const s = watcher.stats();
    return s !== null && s.video_opened > st.video_opened + 60 && s.audio_opened > st.audio_opened + 30 ? s : null;
  }, 90_000);
  watcher.stop();
  await t.ctx.close();
});
