// A teacher and two students in separate browser contexts: sign up, create and enroll, join one live session;
// both students decode the teacher's camera and then the screen share; chat, questions and raised hands appear in
// the same order for everyone; all show the same safety code. Then: a learner who is not enrolled is refused,
// a receiver with a wrong key decodes nothing and warns, a dropped connection comes back without a reload and
// without losing chat, a student the teacher removes stops decoding, the video layer follows the window's width,
// and a joiner's media that comes before its keys waits for them (frames sealed in the epoch before its own are
// dropped, none fails). Screenshots go to test-artifacts/.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { artifacts, debug, decoded, launch, person, relayServerFrames, signUp, startServer, studentJoins, teacherStartsSession, until } from "./lib.mjs";

let server;
let browser;
const people = {};

const canary = "cnry-" + randomBytes(12).toString("hex");
let captured;

before(async () => {
  captured = { frames: join(artifacts, `frames-${process.pid}.bin`), media: join(artifacts, `media-${process.pid}.bin`) };
  server = await startServer(["--capture-frames", captured.frames, "--capture-media", captured.media]);
  browser = await launch();
});

after(async () => {
  for (const [name, p] of Object.entries(people)) {
    if (p?.page) await p.page.screenshot({ path: join(artifacts, `last-${name}.png`) }).catch(() => {});
  }
  await browser?.close();
  await server?.stop();
});

async function chatTexts(page) {
  return page.locator("#chat li").allTextContents();
}

async function openTab(page, name) {
  await page.getByRole("tab", { name }).click();
}

test("teacher and two students: camera, screen, chat, Q&A, hands, safety code", { timeout: 240_000 }, async () => {
  const teacher = await person(browser, server.url);
  const s1 = await person(browser, server.url);
  const s2 = await person(browser, server.url);
  Object.assign(people, { teacher, s1, s2 });
  await signUp(teacher.page, "teacher");
  await signUp(s1.page, "student1");
  await signUp(s2.page, "student2");

  // The teacher creates a course and starts a session now.
  const title = `Rust for the wary ${Date.now()}`;
  await teacher.page.getByLabel("Title").fill(title);
  await teacher.page.getByLabel("Description").fill("Ownership, borrowing and unsafe, live.");
  await teacher.page.getByRole("button", { name: "Create course" }).click();
  await teacher.page.getByRole("heading", { name: title }).waitFor();
  const courseUrl = teacher.page.url();
  await teacher.page.getByRole("button", { name: "Schedule" }).click();
  await teacher.page.getByRole("link", { name: "Start the live room" }).click();
  await until("the teacher's room is live", async () => (await debug(teacher.page, "status")) === "live");
  const liveUrl = teacher.page.url();
  people.courseUrl = courseUrl;
  people.liveUrl = liveUrl;

  // Students find it in the catalog, enroll and join.
  for (const s of [s1, s2]) {
    await s.page.getByRole("searchbox").fill(title);
    await s.page.getByRole("button", { name: "Search" }).click();
    await s.page.getByRole("link", { name: title }).click();
    await s.page.getByRole("button", { name: /Enroll/ }).click();
    await s.page.getByText("You are enrolled.").waitFor();
    await s.page.getByRole("link", { name: "Join live" }).click();
  }
  for (const s of [s1, s2]) {
    await until("the student's room is live", async () => (await debug(s.page, "status")) === "live");
  }

  // Names travel encrypted inside the group.
  for (const [p, name] of [
    [teacher.page, "Ada (teacher)"],
    [s1.page, "Grace"],
    [s2.page, "Linus"],
  ]) {
    await openTab(p, "People");
    await p.getByRole("textbox", { name: "Your name in this room" }).fill(name);
    await p.getByRole("button", { name: "Set name" }).click();
    await openTab(p, "Chat");
  }

  // Each student decodes the teacher's camera.
  for (const s of [s1, s2]) {
    await until("a student decodes the teacher's camera (framesDecoded > 30)", async () => ((await decoded(s.page))["teacher:camera"] ?? 0) > 30, 60_000);
  }
  // The camera goes out in three simulcast layers.
  const layers = await until("three encoded camera layers", async () => {
    const l = await debug(teacher.page, "outbound");
    return l?.length === 3 && l.every((x) => x.framesEncoded > 10) ? l : null;
  }, 30_000);
  assert.deepEqual(layers.map((l) => l.rid).sort(), ["f", "h", "q"]);
  assert.ok(layers[0].width < layers[1].width && layers[1].width < layers[2].width, `layer widths ${JSON.stringify(layers)}`);
  // Then the screen share.
  await teacher.page.getByRole("button", { name: "Share screen" }).click();
  for (const s of [s1, s2]) {
    await until("a student decodes the teacher's screen (framesDecoded > 30)", async () => ((await decoded(s.page))["teacher:screen"] ?? 0) > 30, 60_000);
  }
  for (const p of [teacher.page, s1.page, s2.page]) {
    assert.equal(await debug(p, "indicator"), "End-to-end encrypted");
  }

  // Audio-only mode: video stops, audio goes on; back to video after.
  await s2.page.getByRole("button", { name: "Audio only" }).click();
  await s2.page.waitForTimeout(1500);
  const vBefore = await decoded(s2.page);
  const aBefore = await debug(s2.page, "audioPackets");
  await s2.page.waitForTimeout(2000);
  const vAfter = await decoded(s2.page);
  assert.ok((vAfter["teacher:camera"] ?? 0) - (vBefore["teacher:camera"] ?? 0) <= 2, `audio-only still decodes video: ${JSON.stringify([vBefore, vAfter])}`);
  assert.ok((await debug(s2.page, "audioPackets")) > aBefore + 20, "audio goes on in audio-only mode");
  assert.ok(await s2.page.locator("#tile-camera").isHidden());
  await s2.page.getByRole("button", { name: "Audio only" }).click();
  await until("video again after audio-only", async () => ((await decoded(s2.page))["teacher:camera"] ?? 0) > (vAfter["teacher:camera"] ?? 0) + 20, 30_000);

  // Chat: everyone sees the same messages in the same order.
  await teacher.page.getByRole("textbox", { name: "Message" }).fill("Welcome, everyone");
  await teacher.page.getByRole("textbox", { name: "Message" }).press("Enter");
  await s1.page.getByRole("textbox", { name: "Message" }).fill("Hello from Grace");
  await s1.page.getByRole("textbox", { name: "Message" }).press("Enter");
  await s2.page.getByRole("textbox", { name: "Message" }).fill("Hi, Linus here");
  await s2.page.getByRole("textbox", { name: "Message" }).press("Enter");
  const lists = [];
  for (const p of [teacher.page, s1.page, s2.page]) {
    lists.push(await until("three chat messages", async () => {
      const t = await chatTexts(p);
      return t.length >= 3 ? t : null;
    }));
  }
  assert.deepEqual(lists[1], lists[0]);
  assert.deepEqual(lists[2], lists[0]);
  assert.ok(lists[0].some((t) => t.includes("Grace: Hello from Grace")), `names resolve: ${lists[0]}`);

  // A random canary in chat, a question and a name: the server must never see it (checked below).
  await s2.page.getByRole("textbox", { name: "Message" }).fill(`chat ${canary}`);
  await s2.page.getByRole("textbox", { name: "Message" }).press("Enter");
  for (const p of [teacher.page, s1.page, s2.page]) {
    await until("the canary chat arrives", async () => (await chatTexts(p)).some((t) => t.endsWith(`chat ${canary}`)));
  }

  // Q&A: ask, upvote, mark answered.
  await openTab(s1.page, "Q&A");
  await s1.page.getByRole("textbox", { name: "Your question" }).fill("What does Pin guarantee?");
  await s1.page.getByRole("button", { name: "Ask" }).click();
  await s1.page.getByRole("textbox", { name: "Your question" }).fill(`Is unsafe ever fine? ${canary}`);
  await s1.page.getByRole("button", { name: "Ask" }).click();
  await openTab(s2.page, "Q&A");
  await s2.page.getByRole("button", { name: /Upvote: Is unsafe ever fine\? cnry/ }).click();
  await openTab(teacher.page, "Q&A");
  await until("the upvote reaches the teacher", async () => (await teacher.page.locator("#questions li").first().textContent())?.includes("Is unsafe ever fine?") && (await teacher.page.locator("#questions li").first().textContent())?.includes("▲ 1"));
  await teacher.page.locator("#questions li", { hasText: "Is unsafe ever fine?" }).getByRole("button", { name: "Mark answered" }).click();
  const qs = [];
  for (const p of [teacher.page, s1.page, s2.page]) {
    await openTab(p, "Q&A");
    qs.push(await until("answered question", async () => {
      const t = await p.locator("#questions li").evaluateAll((lis) =>
        lis.map((li) => `${li.querySelector(".q-text")?.textContent}|${li.classList.contains("answered")}|${li.querySelector("button")?.textContent}`),
      );
      return t.length === 2 && t.some((x) => x.includes("|true|")) ? t : null;
    }));
  }
  assert.deepEqual(qs[1], qs[0]);
  assert.deepEqual(qs[2], qs[0]);

  // Raised hands form one ordered queue the teacher sees.
  await openTab(s2.page, "Hands");
  await s2.page.getByRole("button", { name: "Raise hand" }).click();
  await openTab(s1.page, "Hands");
  await s1.page.getByRole("button", { name: "Raise hand" }).click();
  await openTab(teacher.page, "Hands");
  const hands = await until("two raised hands", async () => {
    const t = await teacher.page.locator("#hands li").allTextContents();
    return t.length === 2 ? t : null;
  });
  assert.deepEqual(hands, ["Linus", "Grace"]);

  // The same safety code everywhere (same epoch).
  const codes = await until("one safety code", async () => {
    const c = await Promise.all([teacher.page, s1.page, s2.page].map((p) => p.locator("#safety-code").textContent()));
    return c.every((x) => x === c[0] && /^\d{5}( \d{5}){5}$/.test(x ?? "")) ? c : null;
  });
  assert.equal(new Set(codes).size, 1);

  // The server saw none of it: not in the WebSocket frames it received and sent, not in the media it forwarded,
  // not in its database files, not in its log.
  const seen = (bytes) => bytes.includes(Buffer.from(canary)) || bytes.includes(Buffer.from("Hello from Grace"));
  const frames = readFileSync(captured.frames);
  const media = readFileSync(captured.media);
  assert.ok(frames.length > 10_000 && media.length > 100_000, `captures hold traffic (${frames.length}, ${media.length} bytes)`);
  assert.ok(frames.includes(Buffer.from('"t":"media_publish"')), "the frame capture holds the clear signaling");
  assert.ok(!seen(frames), "a chat canary reached the server's WebSocket frames");
  assert.ok(!seen(media), "a chat canary reached the SFU's payloads");
  assert.ok(!frames.includes(Buffer.from("Ada (teacher)")), "a display name reached the server");
  for (const f of readdirSync(server.dir).filter((f) => statSync(join(server.dir, f)).isFile())) {
    assert.ok(!seen(readFileSync(join(server.dir, f))), `a canary is in the data dir's ${f}`);
  }
  assert.ok(!server.log().includes(canary), "a canary is in the server's log");

  // Screenshots at desktop, tablet and phone widths, teacher and student, and the layout each width should have:
  // desktop puts the panels beside the stage, tablet and phone below it; nothing sticks out sideways; the stage
  // spans the width it is given.
  const layout = (p) =>
    p.evaluate(() => {
      const box = (s) => document.querySelector(s).getBoundingClientRect();
      const stage = box(".stage-wrap");
      const side = box(".side");
      return {
        beside: side.left >= stage.right - 1 && side.top < stage.bottom,
        below: side.top >= stage.bottom - 1,
        stageShare: stage.width / document.documentElement.clientWidth,
        overflow: document.documentElement.scrollWidth > window.innerWidth + 1,
      };
    });
  for (const [who, p] of [
    ["teacher", teacher.page],
    ["student", s1.page],
  ]) {
    await openTab(p, "Chat");
    for (const [width, height, name, place, share] of [
      [1280, 800, "desktop", "beside", 0.55],
      [820, 1180, "tablet", "below", 0.9],
      [390, 844, "phone", "below", 0.9],
    ]) {
      await p.setViewportSize({ width, height });
      await p.waitForTimeout(width === 1280 ? 500 : 800);
      await p.screenshot({ path: join(artifacts, `${who}-${name}.png`), fullPage: width !== 1280 });
      const l = await layout(p);
      const what = `${who} at ${width} px: ${JSON.stringify(l)}`;
      assert.ok(l[place], `${what}: the panels should be ${place} the stage`);
      assert.ok(!l.overflow, `${what}: the page scrolls sideways`);
      assert.ok(l.stageShare >= share, `${what}: the stage is narrower than ${share} of the page`);
    }
    await p.setViewportSize({ width: 1280, height: 800 });
  }
});

test("the layer follows the window: a phone-width student gets the lowest, a desktop-width one a higher", { timeout: 120_000 }, async () => {
  const { teacher, s1 } = people;
  // What the teacher encodes per layer (Chrome may scale a layer down under load) and what the student decodes.
  const sizes = async () => {
    const out = (await debug(teacher.page, "outbound")) ?? [];
    const q = out.find((l) => l.rid === "q")?.width ?? 0;
    const got = ((await debug(s1.page, "widths")) ?? {})["teacher:camera"] ?? 0;
    return { q, got, layers: out.map((l) => `${l.rid} ${l.width}`).join(", ") };
  };
  // Each throws what it saw when it does not hold, so a timeout says where the layers were.
  const check = (ok) => async () => {
    const s = await sizes();
    if (!ok(s)) throw new Error(`student decodes width ${s.got}; teacher encodes ${s.layers}`);
    return s;
  };
  const above = check((s) => s.q > 0 && s.got > s.q);
  const lowest = check((s) => s.q > 0 && s.got > 0 && s.got <= s.q);
  await s1.page.setViewportSize({ width: 1280, height: 800 });
  await until("a desktop-width student above the lowest layer", above, 45_000);
  await s1.page.setViewportSize({ width: 390, height: 844 });
  await until("a phone-width student on the lowest layer", lowest, 45_000);
  await s1.page.setViewportSize({ width: 1280, height: 800 });
  await until("back at desktop width, above the lowest layer again", above, 45_000);
});

test("keyboard and labels: every control is named, tabs move with arrow keys, focus is visible", { timeout: 60_000 }, async () => {
  for (const p of [people.teacher.page, people.s1.page]) {
    const unnamed = await p.evaluate(() =>
      [...document.querySelectorAll("button, input, textarea, select, a[href], video[aria-label]")]
        .filter((el) => el.getClientRects().length > 0)
        .filter((el) => {
          const labelled = el.getAttribute("aria-label") || el.getAttribute("title") || (el.labels?.[0]?.textContent ?? "");
          return !(labelled.trim() || el.textContent?.trim());
        })
        .map((el) => el.outerHTML.slice(0, 120)),
    );
    assert.deepEqual(unnamed, [], "controls without an accessible name");
    await p.getByRole("tab", { name: "Chat" }).focus();
    await p.keyboard.press("ArrowRight");
    assert.equal(await p.evaluate(() => document.activeElement?.id), "tab-qa");
    assert.ok(await p.locator("#panel-qa").isVisible());
    assert.ok(await p.locator("#panel-chat").isHidden());
    await p.keyboard.press("ArrowLeft");
    assert.equal(await p.evaluate(() => document.activeElement?.id), "tab-chat");
    await p.keyboard.press("Tab");
    const focused = await p.evaluate(() => {
      const el = document.activeElement;
      const cs = el ? getComputedStyle(el) : null;
      return { tag: el?.tagName, outline: cs?.outlineStyle, width: cs?.outlineWidth };
    });
    assert.ok(focused.outline !== "none" && focused.width !== "0px", `keyboard focus is visible: ${JSON.stringify(focused)}`);
  }
  // The skip link is the first stop on a page, and it moves focus to the content.
  const p = await people.s1.ctx.newPage();
  await p.goto("/#/");
  await p.getByRole("heading", { name: "Courses", exact: true }).waitFor();
  await p.keyboard.press("Tab");
  assert.equal(await p.evaluate(() => document.activeElement?.textContent), "Skip to content");
  await p.keyboard.press("Enter");
  assert.equal(await p.evaluate(() => document.activeElement?.id), "main");
  await p.close();
});

test("the teacher puts a student on stage: the others decode the student's camera; off stage it stops", { timeout: 90_000 }, async () => {
  const { teacher, s1, s2 } = people;
  const device = await debug(s1.page, "device");
  await openTab(teacher.page, "People");
  await teacher.page.locator("#people li", { hasText: "Grace" }).getByRole("button", { name: "Put on stage" }).click();
  await until("Grace publishes", async () => ((await debug(s1.page, "outbound")) ?? []).some((l) => l.framesEncoded > 10), 30_000);
  for (const p of [teacher.page, s2.page]) {
    await until("Grace's camera decodes for the others", async () => ((await decoded(p))[`${device}:camera`] ?? 0) > 30, 60_000);
  }
  await s1.page.getByRole("button", { name: "Stop camera" }).waitFor();
  await teacher.page.locator("#people li", { hasText: "Grace" }).getByRole("button", { name: "Take off stage" }).click();
  await until("Grace stops publishing", async () => ((await debug(s1.page, "outbound")) ?? []).length === 0, 30_000);
  await until("Grace's tile goes away", async () => (await decoded(s2.page))[`${device}:camera`] === undefined, 30_000);
  assert.ok(await s1.page.getByRole("toolbar", { name: "Your media" }).isHidden(), "off stage: no media controls");
});

test("a learner who is not enrolled is refused with a clear message", { timeout: 60_000 }, async () => {
  const outsider = await person(browser, server.url);
  people.outsider = outsider;
  await signUp(outsider.page, "outsider");
  await outsider.page.goto("/" + new URL(people.liveUrl).hash);
  await outsider.page.getByRole("alert").filter({ hasText: "not enrolled" }).waitFor();
  const text = await outsider.page.getByRole("alert").filter({ hasText: "not enrolled" }).textContent();
  assert.match(text, /You are not enrolled in this course/);
  assert.equal(await debug(outsider.page, "status"), null, "no room was opened");
  await outsider.ctx.close();
  delete people.outsider;
});

test("after a network drop the room reconnects without a reload and loses no chat", { timeout: 120_000 }, async () => {
  const { teacher, s1, s2 } = people;
  const marker = await s1.page.evaluate(() => performance.timeOrigin);
  await s1.ctx.setOffline(true);
  await s1.page.evaluate(() => window.cloisterDebug.dropConnection());
  await until("s1 notices", async () => (await debug(s1.page, "status")) !== "live");
  await s1.page.getByRole("textbox", { name: "Message" }).fill("typed while offline");
  await s1.page.getByRole("textbox", { name: "Message" }).press("Enter");
  await s1.page.waitForTimeout(1500);
  await s1.ctx.setOffline(false);
  await until("s1 is live again", async () => (await debug(s1.page, "status")) === "live", 30_000);
  assert.equal(await s1.page.evaluate(() => performance.timeOrigin), marker, "the page was not reloaded");
  for (const p of [teacher.page, s1.page, s2.page]) {
    await until("the offline message reaches everyone once", async () => (await chatTexts(p)).filter((t) => t.endsWith("typed while offline")).length === 1);
  }
  const lists = await Promise.all([teacher.page, s1.page, s2.page].map(chatTexts));
  assert.deepEqual(lists[1], lists[0]);
  assert.deepEqual(lists[2], lists[0]);
  // Media comes back on a new connection.
  await until("s1 decodes the teacher's camera again", async () => ((await decoded(s1.page))["teacher:camera"] ?? 0) > 30, 60_000);
});

test("a failed media path comes back on its own: the SFU ends the silent connections and the pages make new ones", { timeout: 120_000 }, async () => {
  const { teacher, s1 } = people;
  const pub = (await debug(teacher.page, "mediaStates")).publishPeer;
  const sub = (await debug(s1.page, "mediaStates")).subscribePeer;
  const mids = new Set((await debug(s1.page, "receivers")).map((r) => r.key));
  await teacher.page.evaluate(() => window.cloisterDebug.dropMediaPaths());
  await s1.page.evaluate(() => window.cloisterDebug.dropMediaPaths());
  await until("both pages have new media connections", async () => {
    const [t, s] = [await debug(teacher.page, "mediaStates"), await debug(s1.page, "mediaStates")];
    if (t.publishPeer !== null && t.publishPeer !== pub && s.subscribePeer !== null && s.subscribePeer !== sub) return true;
    throw new Error(JSON.stringify({ teacher: t, s1: s }));
  }, 60_000);
  await until("s1 decodes the teacher's camera on the new connections", async () => {
    const receivers = await debug(s1.page, "receivers");
    if (receivers.some((r) => !mids.has(r.key) && r.source === "camera" && r.opened > 30)) return true;
    throw new Error(JSON.stringify(receivers));
  }, 60_000);
  assert.equal(await debug(teacher.page, "status"), "live", "the room itself never went away");
});

/** After the teacher's page came back: its chat reaches the student, the student decodes a camera track that is
 * not among `mids` (the ones before), and both show the same safety code. */
async function teacherIsBack({ teacher, s1 }, text, mids) {
  await teacher.page.getByRole("textbox", { name: "Message" }).fill(text);
  await teacher.page.getByRole("textbox", { name: "Message" }).press("Enter");
  await until(`the teacher's "${text}" arrives`, async () => (await chatTexts(s1.page)).some((t) => t.endsWith(text)));
  await until("the student decodes the teacher's new camera track", async () => {
    const receivers = await debug(s1.page, "receivers");
    if (receivers.some((r) => !mids.has(r.key) && r.source === "camera" && r.opened > 30)) return true;
    // What both pages see, for the failure message.
    const seen = { before: [...mids], receivers, decoded: await decoded(s1.page), student: await debug(s1.page, "mediaStates"),
      teacher: await debug(teacher.page, "mediaStates"), outbound: await debug(teacher.page, "outbound"),
      epochs: [await debug(teacher.page, "epoch"), await debug(s1.page, "epoch")] };
    throw new Error(JSON.stringify(seen));
  }, 60_000);
  assert.equal(await debug(s1.page, "safetyCode"), await debug(teacher.page, "safetyCode"));
}

test("the teacher reloads the page: the same device is back in the group, with a fresh epoch, chat and video", { timeout: 120_000 }, async () => {
  const { teacher, s1 } = people;
  const device = await debug(teacher.page, "device");
  const epoch = await debug(teacher.page, "epoch");
  const mids = new Set((await debug(s1.page, "receivers")).map((r) => r.key));
  await teacher.page.reload();
  await until("the teacher is live again", async () => (await debug(teacher.page, "status")) === "live", 30_000);
  assert.equal(await debug(teacher.page, "device"), device, "the same device, restored from the tab's storage");
  assert.ok((await chatTexts(teacher.page)).some((t) => t.endsWith("Welcome, everyone")), "the chat shown before the reload is still shown");
  await until("a fresh epoch from the restored member's own commit", async () => (await debug(teacher.page, "epoch")) > epoch, 30_000);
  await teacherIsBack(people, "back after a reload", mids);
});

test("the teacher closes the tab and opens the session again: the same device is back, with chat and video", { timeout: 120_000 }, async () => {
  const { teacher, s1 } = people;
  const device = await debug(teacher.page, "device");
  const mids = new Set((await debug(s1.page, "receivers")).map((r) => r.key));
  await teacher.page.close();
  teacher.page = await teacher.ctx.newPage();
  teacher.page.on("pageerror", (e) => console.error("[page error]", e.message));
  await teacher.page.goto(people.liveUrl);
  await until("the teacher is live again", async () => (await debug(teacher.page, "status")) === "live", 30_000);
  assert.equal(await debug(teacher.page, "device"), device, "the same device, from this browser's storage");
  assert.ok((await chatTexts(teacher.page)).some((t) => t.endsWith("back after a reload")), "the chat shown before is shown again");
  await teacherIsBack(people, "back in a new tab", mids);
});

test("a student the teacher removes stops decoding after the next epoch", { timeout: 90_000 }, async () => {
  const { teacher, s1, s2 } = people;
  const epoch = await debug(teacher.page, "epoch");
  const was = (await decoded(s2.page))["teacher:camera"] ?? 0;
  await until("Linus is decoding before the removal", async () => ((await decoded(s2.page))["teacher:camera"] ?? 0) > was + 10);
  await openTab(teacher.page, "People");
  await teacher.page.getByRole("button", { name: "Remove Linus" }).click();
  await until("Linus is removed", async () => (await debug(s2.page, "status")) === "removed", 30_000);
  await until("a new epoch", async () => (await debug(teacher.page, "epoch")) > epoch);
  const frozen = await decoded(s2.page);
  const other = await decoded(s1.page);
  await s1.page.waitForTimeout(3000);
  assert.deepEqual(await decoded(s2.page), frozen, "the removed student decodes nothing more");
  assert.ok(((await decoded(s1.page))["teacher:camera"] ?? 0) > (other["teacher:camera"] ?? 0) + 20, "the others go on");
  await s2.page.getByRole("alert").filter({ hasText: "removed you" }).waitFor();
  const roster = await teacher.page.locator("#people li").allTextContents();
  assert.ok(!roster.some((r) => r.includes("Linus")), `the roster no longer lists Linus: ${roster}`);
  assert.equal(await debug(s1.page, "safetyCode"), await debug(teacher.page, "safetyCode"));
});

test("a joining student's media starts before its Welcome: the frames that come first wait for the keys, none fails", { timeout: 90_000 }, async () => {
  const s4 = await person(browser, server.url);
  people.s4 = s4;
  await signUp(s4.page, "student4");
  // The page gets its Welcome, and every delivery-service frame after it (in order), 2 s late; media signaling
  // passes at once. So the teacher's frames reach the media worker before the epoch's keys do.
  let late = null;
  await relayServerFrames(s4.page, (f, send) => {
    const media = f.t.startsWith("media_") || f.t === "speaker" || f.t === "staged" || ((f.t === "ok" || f.t === "error") && f.id >= 2 ** 40);
    if (late === null && f.t === "welcome") late = new Promise((ok) => setTimeout(ok, 2000));
    if (late === null || media) send();
    else late = late.then(send);
  });
  await studentJoins(s4.page, /#\/course\/(\S+)/.exec(people.courseUrl)[1]);
  await until("the student decodes the teacher's camera", async () => ((await decoded(s4.page))["teacher:camera"] ?? 0) > 30, 60_000);
  assert.ok(late !== null, "a Welcome came");
  const rs = await debug(s4.page, "receivers");
  const camera = rs.find((r) => r.source === "camera");
  assert.ok(camera !== undefined && camera.held > 0, `camera frames waited for the keys: ${JSON.stringify(rs)}`);
  for (const r of rs) assert.equal(r.failed, 0, `no ${r.source} frame failed: ${JSON.stringify(r)}`);
  assert.equal(await debug(s4.page, "indicator"), "End-to-end encrypted");
  await s4.page.close();
});

test("a joiner whose media comes before the teacher's commit that adds it: the frames of the epoch before drop, none fails", { timeout: 120_000 }, async () => {
  // A teacher of its own, whose page gets the server's "commit now" 1.5 s late: the student's media connection is up
  // while the teacher still seals in the epoch before the student's, so the student receives frames it never gets
  // the key of, then the new epoch's.
  const t2 = await person(browser, server.url);
  const s5 = await person(browser, server.url);
  people.t2 = t2;
  people.s5 = s5;
  let delayed = 0;
  await relayServerFrames(t2.page, (f, send) => {
    if (f.t !== "commit_now") return send();
    delayed += 1;
    setTimeout(send, 1500);
  });
  await signUp(t2.page, "teacher2");
  const { course } = await teacherStartsSession(t2.page, `Commits late ${Date.now()}`);
  await signUp(s5.page, "student5");
  await studentJoins(s5.page, course);
  await until("the student decodes the teacher's camera", async () => ((await decoded(s5.page))["teacher:camera"] ?? 0) > 30, 60_000);
  assert.ok(delayed > 0, "the teacher's commit was held back");
  const rs = await debug(s5.page, "receivers");
  const camera = rs.find((r) => r.source === "camera");
  assert.ok(camera !== undefined && camera.dropped > 0, `frames from before the student's epoch were dropped: ${JSON.stringify(rs)}`);
  for (const r of rs) assert.equal(r.failed, 0, `no ${r.source} frame failed: ${JSON.stringify(r)}`);
  assert.equal(await debug(s5.page, "indicator"), "End-to-end encrypted");
  await s5.page.close();
  await t2.page.close();
});

test("a receiver with a wrong key decodes no frames and its indicator names the sender", { timeout: 90_000 }, async () => {
  // A third student joins late, decodes, and then gets a wrong key.
  const { s1 } = people;
  const s2 = await person(browser, server.url);
  people.s3 = s2;
  await signUp(s2.page, "student3");
  await studentJoins(s2.page, /#\/course\/(\S+)/.exec(people.courseUrl)[1]);
  await until("the late student decodes the teacher's camera", async () => ((await decoded(s2.page))["teacher:camera"] ?? 0) > 30, 60_000);
  await s2.page.evaluate(() => window.cloisterDebug.wrongKey());
  const warn = await until("the indicator warns", async () => {
    const t = await s2.page.locator("#e2ee").textContent();
    return t?.startsWith("Warning") ? t : null;
  }, 20_000);
  assert.match(warn, /media from Ada \(teacher\) cannot be decrypted/);
  assert.equal(await debug(s1.page, "indicator"), "End-to-end encrypted", "only the page with the wrong key warns");
  await s2.page.waitForTimeout(1000);
  const before = await decoded(s2.page);
  const opened = (await debug(s2.page, "receivers")).reduce((n, r) => n + r.opened, 0);
  const other = await decoded(s1.page);
  await s2.page.waitForTimeout(3000);
  const later = await decoded(s2.page);
  assert.equal(later["teacher:camera"], before["teacher:camera"], "no camera frame decoded with the wrong key");
  assert.equal(later["teacher:screen"], before["teacher:screen"], "no screen frame decoded with the wrong key");
  assert.equal((await debug(s2.page, "receivers")).reduce((n, r) => n + r.opened, 0), opened, "no frame opened");
  assert.ok(((await decoded(s1.page))["teacher:camera"] ?? 0) > (other["teacher:camera"] ?? 0) + 20, "others go on decoding");
  assert.equal(await debug(s1.page, "indicator"), "End-to-end encrypted");
});
