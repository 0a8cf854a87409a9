// First-frame benchmark: the time from a student opening the session URL to the first decrypted, decoded frame of
// the teacher's camera, with 10 students already in the room, on loopback.
//
// A browser teacher publishes (camera in three simulcast layers, microphone; with --native-teacher the native
// client publishes tests/media's three camera layers and tone instead, so no video encoder shares the machine's CPU
// with the student, as none would in a real class); 10 native students (cloister-client, webrtc-rs) join and watch first; then a browser student, signed in and enrolled, opens the session URL in a new
// page, ROUNDS times. The clock starts at the page's navigation start (performance.timeOrigin) and stops at the
// first requestVideoFrameCallback of the teacher's camera, whose frames pass through the decrypting transform.
// Each round is a first visit: the page's saved room state is deleted first, so the student joins as a new device
// (key packages, the DS's Add, the teacher's commit, a Welcome); with --reopen it is kept, and the student comes
// back as the device of the round before (its group state restored from localStorage, no Welcome).
// Prints one JSON object: per-round step times and the median and max. Usage:
//   node bench/first-frame.mjs [--rounds 7] [--students 10] [--reopen] [--native-teacher] [--trace FILE]   (CLOISTER_BIN, CLOISTER_CLIENT_BIN: release)
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { clientBin, debug, launch, person, signUp, startServer, teacherStartsSession, uniqueEmail, until } from "../tests/lib.mjs";

const arg = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
};
const ROUNDS = arg("--rounds", 7);
const STUDENTS = arg("--students", 10);
const REOPEN = process.argv.includes("--reopen");
const NATIVE_TEACHER = process.argv.includes("--native-teacher");
const TRACE = process.argv.includes("--trace") ? process.argv[process.argv.indexOf("--trace") + 1] : undefined;

const server = await startServer();
const browser = await launch();
const children = [];
const once = (email, args, keep) =>
  new Promise((ok, fail) => {
    const c = spawn(clientBin(), ["--server", server.url, "--email", email, ...args], {
      env: { ...process.env, CLOISTER_PASSWORD: "bench password 123" },
      stdio: [keep ? "pipe" : "ignore", "pipe", keep ? "inherit" : "pipe"],
    });
    let out = "";
    let err = "";
    c.stdout.on("data", (d) => (out += d));
    c.stderr?.on("data", (d) => (err += d));
    if (keep) {
      children.push(c);
      ok({ c, out: () => out });
    } else c.on("exit", (code) => (code === 0 ? ok(out) : fail(Object.assign(new Error(`cloister-client ${args[0]}: ${code} ${err}`), { err }))));
  });
// Sign-up and sign-in are rate limited per IP (every bench user comes from 127.0.0.1): wait and retry, as a person
// would. This is setup, outside the timed part.
const run = async (email, args, keep = false) => {
  for (let i = 0; ; i++) {
    try {
      return await once(email, args, keep);
    } catch (e) {
      if (i >= 30 || !String(e.err).includes("rate_limited")) throw e;
      await new Promise((ok) => setTimeout(ok, 2000));
    }
  }
};

try {
  let course;
  let session;
  if (NATIVE_TEACHER) {
    const email = uniqueEmail("bench-teacher");
    await run(email, ["signup"]);
    const out = await run(email, ["new-session", "--title", `First frame ${Date.now()}`]);
    course = /^course (\S+)$/m.exec(out)?.[1];
    session = /^session (\S+)$/m.exec(out)?.[1];
    if (course === undefined || session === undefined) throw new Error(`new-session printed ${out}`);
    const clip = (f) => fileURLToPath(new URL(`../../../tests/media/${f}`, import.meta.url));
    await run(email, ["host", session, "--name", "Bench Teacher",
      ...["camera-q.ivf", "camera-h.ivf", "camera-f.ivf"].flatMap((f) => ["--publish-camera", clip(f)]),
      "--publish-mic", clip("mic.ogg")], true);
  } else {
    const t = await person(browser, server.url);
    await signUp(t.page, "bench-teacher");
    ({ course, session } = await teacherStartsSession(t.page, `First frame ${Date.now()}`));
  }

  // The measured student signs up and enrolls first (the sign-up limit per IP would refuse it after the natives).
  const s = await person(browser, server.url);
  await signUp(s.page, "bench-student");
  await s.page.goto(`/#/course/${course}`);
  await s.page.getByRole("button", { name: /Enroll/ }).click();
  await s.page.getByText("You are enrolled.").waitFor();
  await s.page.close();

  const watchers = [];
  for (let i = 0; i < STUDENTS; i++) {
    const email = uniqueEmail(`bench-native-${i}`);
    await run(email, ["signup"]);
    await run(email, ["enroll", course]);
    watchers.push(await run(email, ["join", session, "--device", `native${i}`, "--watch", "--stats-every", "1"], true));
  }
  await until(`${STUDENTS} native students open the teacher's video`, async () =>
    watchers.every((w) => {
      const l = w.out().trim().split("\n").reverse().find((x) => x.startsWith("media-stats "));
      return l !== undefined && JSON.parse(l.slice(12)).video_opened > 0;
    }), 120_000);


  const rounds = [];
  for (let r = 0; r < ROUNDS; r++) {
    if (!REOPEN) {
      const p = await s.ctx.newPage();
      await p.goto(`${server.url}/#/`);
      await p.evaluate(() => {
        for (const k of Object.keys(localStorage)) if (k.startsWith("cloister.room.")) localStorage.removeItem(k);
      });
      await p.close();
    }
    const page = await s.ctx.newPage();
    // --trace FILE: a Chromium trace of the last round (open it in chrome://tracing or Perfetto).
    const tracing = TRACE !== undefined && rounds.length === ROUNDS - 1;
    if (tracing) await browser.startTracing(page, { path: TRACE, categories: ["devtools.timeline", "disabled-by-default-devtools.timeline", "v8", "v8.wasm", "blink.user_timing", "toplevel", "disabled-by-default-v8.cpu_profiler"] });
    await page.goto(`${server.url}/#/live/${session}`);
    const marks = await until("the first decoded teacher frame", async () => {
      const m = await debug(page, "marks");
      return m?.first_frame_teacher_camera !== undefined ? m : null;
    }, 30_000, 20);
    // Where the time before the app's first mark goes: the document's request, its scripts, its parse.
    const nav = await page.evaluate(() => {
      const n = performance.getEntriesByType("navigation")[0];
      const js = performance.getEntriesByType("resource").find((e) => e.name.endsWith(".js"));
      // Each request's start/connectStart/connectEnd/requestStart/responseStart/responseEnd: where its time went
      // (queued in the browser, connecting, the server, the body).
      const timing = (e) => [e.startTime, e.connectStart, e.connectEnd, e.requestStart, e.responseStart, e.responseEnd].map(Math.round).join("/");
      const fetches = performance.getEntriesByType("resource").filter((e) => e.name.includes("/api/")).slice(0, 6)
        .map((e) => `${new URL(e.name).pathname.split("/").slice(2, 4).join("/")} ${timing(e)}`);
      const at = (name) => performance.getEntriesByName(name)[0]?.startTime;
      const wasm = performance.getEntriesByType("resource").find((e) => e.name.endsWith(".wasm"));
      if (js !== undefined) fetches.push(`js ${timing(js)}`);
      if (wasm !== undefined) fetches.push(`wasm ${timing(wasm)}`);
      return { core_start: at("core_start"), wasm_loaded: wasm?.responseEnd, core_compiled: at("core_compiled"), core_ready: at("core_ready"), nav_request: n.requestStart, nav_response: n.responseEnd, js_loaded: js?.responseEnd, dom_interactive: n.domInteractive, fetches };
    });
    if (tracing) await browser.stopTracing();
    for (const [k, v] of Object.entries(nav)) if (typeof v === "number") nav[k] = Math.round(v);
    rounds.push({ ...nav, ...marks });
    await page.close();
    await new Promise((ok) => setTimeout(ok, 1500));
  }
  const firsts = rounds.map((m) => m.first_frame_teacher_camera).sort((a, b) => a - b);
  const median = firsts[Math.floor(firsts.length / 2)];
  console.log(JSON.stringify({ students_in_room: STUDENTS, teacher: NATIVE_TEACHER ? "native" : "browser", visit: REOPEN ? "reopen" : "first", rounds, first_frame_ms: { median, max: firsts.at(-1), min: firsts[0] } }, null, 1));
} finally {
  for (const c of children) c.stdin?.end("/quit\n");
  await new Promise((ok) => setTimeout(ok, 500));
  for (const c of children) c.kill("SIGTERM");
  await browser.close();
  await server.stop();
}
