// The live room: video and screen share, controls, chat, Q&A, raised hands, roster with fingerprints, the safety
// code and an end-to-end encryption indicator that says what is true at this moment.
import { api, ApiError, type Me } from "./api";
import { mark, marks, resetMarks } from "./marks";
import { Media, type Remote, type Source } from "./media";
import type { ReceiverStats } from "./e2ee-worker";
import { Room, type RoomStatus } from "./room";
import { openRoomStore, stamped, type RoomStore } from "./store";
import { clear, errorLine, h, mount, short, toast } from "./ui";
import type { AppMessage, EpochInfo, ServerFrame } from "./wire";

interface Question {
  seq: number;
  id: string;
  from: string;
  text: string;
  upvotes: Set<string>;
  answered: boolean;
}

let current: { room: Room; media: Media; store: RoomStore; timer: number; onResize: () => void } | null = null;

export function leaveRoom(): void {
  if (current === null) return;
  clearInterval(current.timer);
  window.removeEventListener("resize", current.onResize);
  current.media.close();
  current.room.close();
  current.store.release();
  current = null;
  delete (window as { cloisterDebug?: unknown }).cloisterDebug;
}

function layerForWidth(w: number): number {
  return w < 600 ? 0 : w < 1024 ? 1 : 2;
}

/** A one-line form that sends its input's trimmed text (when not empty) and clears it. */
function sendForm(input: HTMLInputElement, label: string, send: (text: string) => void): HTMLFormElement {
  return h(
    "form",
    {
      class: "row",
      onsubmit: (ev: Event) => {
        ev.preventDefault();
        const text = input.value.trim();
        if (text === "") return;
        send(text);
        input.value = "";
      },
    },
    input,
    h("button", { type: "submit" }, label),
  );
}

/** Shows a local track in a preview element, keeping its stream while the track is the same; whether one shows. */
function preview(el: HTMLVideoElement, track: MediaStreamTrack | undefined): boolean {
  if (track === undefined) el.srcObject = null;
  else if ((el.srcObject as MediaStream | null)?.getVideoTracks()[0] !== track) el.srcObject = new MediaStream([track]);
  return track !== undefined;
}

/** The session's details and the seat, asked for by the router before the account lookup came back. */
export interface Early {
  session: ReturnType<typeof api.liveSession>;
  seat: ReturnType<typeof api.admit>;
  /** The first WebSocket ticket; the room asks for its own when it reconnects. */
  ticket: ReturnType<typeof api.ticket>;
}

export async function liveRoom(me: Me, sessionId: string, early?: Early): Promise<void> {
  resetMarks();
  mark("route");
  const status = h("p", { class: "status", id: "status", "aria-live": "polite" }, "Checking your seat…");
  mount(h("h1", {}, "Live session"), status);
  let courseTeachers: string[] = [];
  let courseId = "";
  let host = false;
  // This tab's claim on the room's storage (a Web Lock, answered by the browser process) is asked meanwhile.
  const opening = openRoomStore(sessionId, me.user_id);
  try {
    // Both at once: the seat is the server's to decide, whatever the session's details say.
    const [session, seat] = await Promise.allSettled([
      early?.session ?? api.liveSession(sessionId),
      early?.seat ?? api.admit(sessionId),
    ]);
    if (session.status === "rejected") throw session.reason;
    const s = session.value;
    courseId = s.course_id;
    courseTeachers = [...(s.staff?.teachers ?? []), ...(s.staff?.tas ?? [])];
    // The first teacher's device creates the session's group; other staff join it and may commit (TAs).
    host = s.staff?.teachers[0] === me.user_id;
    if (seat.status === "rejected") throw seat.reason;
    mark("admitted");
  } catch (e) {
    const enrolled = !(e instanceof ApiError && (e.status === 403 || e.status === 404));
    status.className = "error";
    status.setAttribute("role", "alert");
    status.textContent =
      e instanceof ApiError && e.code === "removed_from_session"
        ? "The session's staff removed you from this live session."
        : e instanceof ApiError && e.status === 403
        ? "You are not enrolled in this course, so you cannot join its live session. Enroll on the course page first."
        : e instanceof ApiError && e.code === "session_full"
          ? "This live session is full."
          : `You cannot join this session: ${e instanceof Error ? e.message : String(e)}`;
    if (courseId !== "" || !enrolled) {
      status.after(h("p", {}, h("a", { href: courseId !== "" ? `#/course/${courseId}` : "#/" }, "Go to the course page")));
    }
    void opening.then((s) => s.release());
    return;
  }
  const teacher = courseTeachers.includes(me.user_id);
  const store = await opening;
  mark("store");

  // --- state
  const names = new Map<string, string>();
  const chat: { seq: number; from: string; text: string }[] = [];
  const questions = new Map<string, Question>();
  const hands = new Map<string, number>();
  const staged = new Set<string>();
  const captions = new Map<string, { el: HTMLElement; device: string; source: string }>();
  let info: EpochInfo | null = null;
  let receivers: ReceiverStats[] = [];
  let haveKey = false;
  let lastStatus: RoomStatus = "connecting";
  let audioOnly = false;
  let myName = localStorage.getItem("cloister.name") ?? "";
  let announced = false;

  // What the page showed before a reload or a closed tab (names, chat, questions, hands): the group state comes back
  // from the room's storage, but messages of past epochs cannot be read again, so the page keeps what it had shown.
  const uiKey = `cloister.ui.${sessionId}.${me.user_id}`;
  try {
    const saved = JSON.parse(store.storage.getItem(uiKey) ?? "null") as {
      names: [string, string][];
      chat: { seq: number; from: string; text: string }[];
      questions: (Omit<Question, "upvotes"> & { upvotes: string[] })[];
      hands: [string, number][];
    } | null;
    if (saved !== null) {
      for (const [u, n] of saved.names) names.set(u, n);
      chat.push(...saved.chat);
      for (const q of saved.questions) questions.set(q.id, { ...q, upvotes: new Set(q.upvotes) });
      for (const [u, seq] of saved.hands) hands.set(u, seq);
    }
  } catch {
    store.storage.removeItem(uiKey);
  }
  let uiTimer: number | null = null;
  const keepUi = () => {
    uiTimer ??= window.setTimeout(() => {
      uiTimer = null;
      if (lastStatus === "removed") return;
      const state = {
        names: [...names],
        chat: chat.slice(-500),
        questions: [...questions.values()].map((q) => ({ ...q, upvotes: [...q.upvotes] })),
        hands: [...hands],
      };
      try {
        store.storage.setItem(uiKey, stamped(state));
      } catch {
        /* storage full: a reload shows less */
      }
    }, 300);
  };

  const who = (user: string) => names.get(user) ?? (courseTeachers.includes(user) ? "Teacher" : "Participant") + " " + short(user);

  // --- elements
  const indicator = h("div", { class: "e2ee", id: "e2ee", role: "status", "aria-live": "polite" }, "Connecting…");
  const safety = h("output", { class: "safety", id: "safety-code", "aria-label": "Safety code" }, "—");
  const conn = h("span", { class: "conn", id: "conn" }, "connecting");
  const stage = h("div", { class: "stage", id: "stage", "aria-label": "Video" });
  const cameraTile = h("figure", { class: "tile main", id: "tile-camera", hidden: true });
  const screenTile = h("figure", { class: "tile main", id: "tile-screen", hidden: true });
  const others = h("div", { class: "others" });
  const local = h("video", { class: "self", id: "self-view", muted: true, autoplay: true, playsinline: true, "aria-label": "Your camera" });
  local.muted = true;
  // What this device shares, as the others see it (its own tracks never come back from the SFU).
  const localScreen = h("video", { muted: true, autoplay: true, playsinline: true, "aria-label": "Your screen share" });
  localScreen.muted = true;
  const localScreenTile = h("figure", { class: "tile main", id: "tile-own-screen", hidden: true }, localScreen, h("figcaption", {}, "Your screen, as the others see it"));
  stage.append(localScreenTile, screenTile, cameraTile, others);
  const chatList = h("ol", { class: "chat", id: "chat", "aria-live": "polite", "aria-label": "Chat messages" });
  const chatInput = h("input", { type: "text", id: "chat-input", maxlength: 2000, autocomplete: "off", "aria-label": "Message" });
  const qList = h("ol", { class: "questions", id: "questions", "aria-label": "Questions" });
  const qInput = h("input", { type: "text", id: "question-input", maxlength: 2000, autocomplete: "off", "aria-label": "Your question" });
  const people = h("ul", { class: "people", id: "people", "aria-label": "People in this session" });
  const handList = h("ol", { class: "hands", id: "hands", "aria-label": "Raised hands, in order" });
  const nameInput = h("input", { type: "text", id: "name-input", maxlength: 64, value: myName, autocomplete: "nickname", "aria-label": "Your name in this room" });
  const err = errorLine();

  const room = new Room(sessionId, me.user_id, host, {
    status: (s, detail) => {
      lastStatus = s;
      conn.textContent = s;
      conn.dataset["state"] = s;
      if (s === "live") mark("live");
      if (s === "live" && !announced) {
        announced = true;
        if (myName !== "") room.say({ type: "profile", display_name: myName });
        media.subscribe();
        if (teacher) void media.publish({ camera: true, mic: true }).then(() => syncButtons());
      }
      if (s === "removed") {
        store.storage.removeItem(uiKey);
        media.close();
        err.set("The teacher removed you from this session.");
      }
      if (s === "refused" && detail !== undefined) err.set(detail);
      renderIndicator();
    },
    epoch: (e) => {
      mark("in_group");
      // Media keys for this epoch are in the worker now: receiving can start before the log is caught up.
      if (room.connected()) media.subscribe();
      const grew = info !== null && e.roster.some((r) => !info!.roster.some((o) => o.leaf === r.leaf && o.user_id === r.user_id));
      info = e;
      safety.textContent = e.safety_code;
      if (grew && myName !== "") room.say({ type: "profile", display_name: myName });
      placeRemotes();
      renderPeople();
      renderIndicator();
    },
    said: (seq, from, _device, m) => onMessage(seq, from, m),
    refused: (code, message) => {
      if (code === "not_admitted" || code === "forbidden") err.set(`Refused: ${message}`);
      else toast(`${code}: ${message}`);
    },
    media: (f) => onMedia(f),
    mediaKey: (epoch, leaf, key, send) => {
      haveKey = true;
      media.post({ t: "key", epoch, leaf, key, send }, [key.buffer]);
    },
    // Media on this connection as soon as the join is asked (on a reconnection too: the server ended the old
    // connection's media). Frames that come before the Welcome's keys wait in the media worker.
    joining: () => void media.reconnect(),
    // The subscribe connection's ICE checks running first (they do not start while the core works on the main
    // thread; once running, ICE and DTLS go on beside it); 300 ms at most.
    beforeWelcome: (): Promise<void> => media.checking(300),
    reconnected: () => void media.reconnect(),
  }, store.storage, early?.ticket);

  const media = new Media(sessionId, {
    signal: (f) => room.sendMedia(f),
    remote: (r) => addRemote(r),
    remoteGone: (mid) => removeRemote(mid),
    stats: (list) => {
      receivers = list;
      renderIndicator();
    },
    error: (msg) => toast(msg),
  });

  function onMedia(f: ServerFrame): void {
    if (f.t === "staged") {
      if (f.on) staged.add(f.user);
      else staged.delete(f.user);
      if (f.user === me.user_id && !teacher) {
        if (f.on) {
          toast("The teacher put you on stage: your camera and microphone are on.");
          void media.publish({ camera: true, mic: true }).then(() => syncButtons());
        } else {
          media.unpublish();
          syncButtons();
        }
      }
      renderPeople();
      return;
    }
    void media.onSignal(f);
  }

  function onMessage(seq: number, from: string, m: AppMessage): void {
    keepUi();
    switch (m.type) {
      case "profile":
        names.set(from, m.display_name.slice(0, 64));
        renderPeople();
        renderChat();
        renderQuestions();
        renderHands();
        return;
      case "chat":
        chat.push({ seq, from, text: m.text });
        chat.sort((a, b) => a.seq - b.seq);
        renderChat();
        return;
      case "question":
        if (!questions.has(m.id)) questions.set(m.id, { seq, id: m.id, from, text: m.text, upvotes: new Set(), answered: false });
        renderQuestions();
        return;
      case "upvote":
        questions.get(m.question_id)?.upvotes.add(from);
        renderQuestions();
        return;
      case "answer": {
        const q = questions.get(m.question_id);
        if (q !== undefined && courseTeachers.includes(from)) q.answered = true;
        renderQuestions();
        return;
      }
      case "raise_hand":
        if (m.raised) {
          if (!hands.has(from)) hands.set(from, seq);
        } else hands.delete(from);
        renderHands();
        return;
      default:
        return;
    }
  }

  // --- rendering
  let scrollDue = false;
  function renderChat(): void {
    chatList.replaceChildren(...chat.map((c) => h("li", { "data-seq": c.seq }, h("b", {}, who(c.from)), ": ", c.text)));
    // To the newest line in the next frame: reading scrollHeight now would lay the page out on the spot (in the
    // room's first build, a forced layout on the way to the WebSocket: BENCHMARKS.md).
    if (scrollDue) return;
    scrollDue = true;
    requestAnimationFrame(() => {
      scrollDue = false;
      chatList.scrollTop = chatList.scrollHeight;
    });
  }

  function renderQuestions(): void {
    const list = [...questions.values()].sort((a, b) => (a.answered === b.answered ? b.upvotes.size - a.upvotes.size || a.seq - b.seq : a.answered ? 1 : -1));
    qList.replaceChildren(
      ...list.map((q) =>
        h(
          "li",
          { class: q.answered ? "answered" : "", "data-id": q.id },
          h("span", { class: "q-text" }, q.text),
          h("span", { class: "muted" }, ` — ${who(q.from)}`),
          q.answered ? h("span", { class: "tag" }, "Answered") : null,
          h(
            "button",
            {
              type: "button",
              class: "small",
              "aria-pressed": q.upvotes.has(me.user_id) ? "true" : "false",
              "aria-label": `Upvote: ${q.text} (${q.upvotes.size} votes)`,
              disabled: q.upvotes.has(me.user_id),
              onclick: () => room.say({ type: "upvote", question_id: q.id }),
            },
            `▲ ${q.upvotes.size}`,
          ),
          teacher && !q.answered
            ? h("button", { type: "button", class: "small", onclick: () => room.say({ type: "answer", question_id: q.id, text: "" }) }, "Mark answered")
            : null,
        ),
      ),
    );
  }

  function renderHands(): void {
    const list = [...hands.entries()].sort((a, b) => a[1] - b[1]);
    handList.replaceChildren(...(list.length === 0 ? [h("li", { class: "muted" }, "No hands raised.")] : list.map(([u]) => h("li", { "data-user": u }, who(u)))));
    handButton.textContent = hands.has(me.user_id) ? "Lower hand" : "Raise hand";
    handButton.setAttribute("aria-pressed", hands.has(me.user_id) ? "true" : "false");
  }

  function renderPeople(): void {
    renderCaptions();
    if (info === null) return;
    const users = new Map<string, { devices: string[]; fps: string[] }>();
    for (const r of info.roster) {
      const u = users.get(r.user_id) ?? { devices: [], fps: [] };
      u.devices.push(r.device_id);
      u.fps.push(r.fingerprint);
      users.set(r.user_id, u);
    }
    people.replaceChildren(
      ...[...users.entries()].map(([u, d]) =>
        h(
          "li",
          { "data-user": u },
          h("span", { class: "name" }, who(u), u === me.user_id ? " (you)" : "", courseTeachers.includes(u) ? " · teacher" : "", staged.has(u) ? " · on stage" : ""),
          h("code", { class: "fp", title: "Signature-key fingerprint: compare it with this person out of band" }, d.fps.join(" · ")),
          teacher && u !== me.user_id
            ? h(
                "span",
                { class: "row" },
                h("button", { type: "button", class: "small", onclick: () => room.sendMedia({ t: "stage", session: sessionId, user: u, on: !staged.has(u) }) }, staged.has(u) ? "Take off stage" : "Put on stage"),
                h("button", { type: "button", class: "small danger", "aria-label": `Remove ${who(u)}`, onclick: () => room.remove(u) }, "Remove"),
              )
            : null,
        ),
      ),
    );
  }

  function deviceUser(device: string): string | undefined {
    return info?.roster.find((r) => r.device_id === device)?.user_id;
  }

  function renderIndicator(): void {
    const now = Date.now();
    const failing = receivers.filter((r) => r.failed > 0 && r.lastFailedAt > r.lastOpenedAt && now - r.lastFailedAt < 3000);
    indicator.className = "e2ee";
    if (lastStatus === "removed") {
      indicator.classList.add("off");
      indicator.textContent = "Removed: you no longer hold this session's keys";
    } else if (info === null) {
      indicator.classList.add("off");
      indicator.textContent = "Not in the encrypted group yet";
    } else if (!haveKey) {
      indicator.classList.add("warn");
      indicator.textContent = "Warning: media keys are missing";
    } else if (failing.length > 0) {
      indicator.classList.add("warn");
      const whom = [...new Set(failing.map((r) => { const u = deviceUser(r.device); return u !== undefined ? who(u) : `device ${r.device}`; }))];
      indicator.textContent = `Warning: media from ${whom.join(", ")} cannot be decrypted`;
    } else {
      indicator.classList.add("ok");
      indicator.textContent = "End-to-end encrypted";
    }
  }

  /** The stage's main tile for a teacher's camera or screen (by the roster); null for any other track. */
  function mainTile(r: Remote): HTMLElement | null {
    const u = deviceUser(r.device);
    const isTeacher = u !== undefined && courseTeachers.includes(u);
    if (isTeacher && r.source === "screen") return screenTile;
    if (isTeacher && r.source === "camera") return cameraTile;
    return null;
  }

  function tileFor(r: Remote): HTMLElement {
    const main = mainTile(r);
    if (main !== null) return main;
    const t = h("figure", { class: "tile", id: `tile-${r.mid}` });
    others.append(t);
    return t;
  }

  /** Tracks that arrived before the roster named their sender (a joining device's media starts before its Welcome
   * is processed) move to the main tile once it does. */
  function placeRemotes(): void {
    for (const r of media.remoteTracks()) {
      if (r.track.kind !== "video") continue;
      const main = mainTile(r);
      if (main === null || main.dataset["mid"] === r.mid) continue;
      const from = document.getElementById(`tile-${r.mid}`);
      const v = from?.querySelector("video");
      if (from === null || v == null) {
        removeRemote(r.mid);
        addRemote(r);
        continue;
      }
      // Moved, not made again: the element keeps playing and shows the picture it has, where a new one would wait
      // for the next decoded frame (up to 50 ms more in the join benchmark).
      clear(main);
      main.append(...from.childNodes);
      main.dataset["mid"] = r.mid;
      main.hidden = from.hidden;
      from.remove();
      if (v.readyState >= HTMLMediaElement.HAVE_CURRENT_DATA) firstFrame(v, r.source);
    }
  }

  /** Marks the first frame shown in each place (the join benchmark reads the teacher camera's). */
  function firstFrame(v: HTMLVideoElement, source: string): void {
    mark(`first_frame_${v.parentElement === cameraTile ? "teacher_camera" : source}`);
  }

  function addRemote(r: Remote): void {
    if (r.track.kind === "audio") {
      const a = h("audio", { autoplay: true, id: `audio-${r.mid}` });
      a.srcObject = new MediaStream([r.track]);
      others.append(a);
      return;
    }
    const tile = tileFor(r);
    clear(tile);
    const v = h("video", { autoplay: true, playsinline: true, muted: true, "data-source": r.source, "data-mid": r.mid });
    v.muted = true;
    v.srcObject = new MediaStream([r.track]);
    const caption = h("figcaption", {});
    captions.set(r.mid, { el: caption, device: r.device, source: r.source });
    tile.append(v, caption);
    renderCaptions();
    tile.dataset["mid"] = r.mid;
    mark(`track_${r.source}`);
    const first = () => firstFrame(v, r.source);
    if (typeof v.requestVideoFrameCallback === "function") v.requestVideoFrameCallback(first);
    else (v as HTMLVideoElement).addEventListener("loadeddata", first, { once: true });
    // An empty slot (a screen not shared yet) shows once frames decode. The element may move to a main tile
    // (`placeRemotes`): its tile is where it is now.
    tile.hidden = true;
    const place = (hidden: boolean) => {
      if (v.parentElement !== null) v.parentElement.hidden = hidden;
    };
    v.addEventListener("resize", () => place(audioOnly));
    r.track.addEventListener("mute", () => place(true));
    r.track.addEventListener("unmute", () => place(audioOnly || v.videoWidth === 0));
  }

  function renderCaptions(): void {
    for (const c of captions.values()) {
      const u = deviceUser(c.device);
      c.el.textContent = `${u !== undefined ? who(u) : "Participant"} · ${c.source === "screen" ? "screen" : "camera"}`;
    }
  }

  function removeRemote(mid: string): void {
    captions.delete(mid);
    for (const el of stage.querySelectorAll(`[data-mid="${CSS.escape(mid)}"]`)) {
      if (el === cameraTile || el === screenTile) {
        clear(el);
        (el as HTMLElement).hidden = true;
      } else el.remove();
    }
    document.getElementById(`audio-${mid}`)?.remove();
  }

  // --- controls
  const toggle = (label: string, source: Source) =>
    h(
      "button",
      {
        type: "button",
        class: "toggle",
        "data-source": source,
        "aria-pressed": "false",
        onclick: () =>
          void (async () => {
            const on = media.localTrack(source) === undefined;
            await media.setTrack(source, on);
            syncButtons();
          })(),
      },
      label,
    );
  const micButton = toggle("Microphone", "mic");
  const camButton = toggle("Camera", "camera");
  const screenButton = toggle("Share screen", "screen");
  const publishControls = h("div", { class: "controls", role: "toolbar", "aria-label": "Your media" }, micButton, camButton, screenButton);
  function syncButtons(): void {
    const pub = media.isPublishing();
    publishControls.hidden = !pub;
    for (const [b, s] of [
      [micButton, "mic"],
      [camButton, "camera"],
      [screenButton, "screen"],
    ] as const) {
      const on = media.localTrack(s) !== undefined;
      b.setAttribute("aria-pressed", on ? "true" : "false");
      b.textContent = { mic: on ? "Mute microphone" : "Unmute microphone", camera: on ? "Stop camera" : "Start camera", screen: on ? "Stop sharing" : "Share screen" }[s];
    }
    local.hidden = !preview(local, media.localTrack("camera"));
    localScreenTile.hidden = !preview(localScreen, media.localTrack("screen"));
  }
  const audioButton = h(
    "button",
    {
      type: "button",
      class: "toggle",
      id: "audio-only",
      "aria-pressed": "false",
      onclick: () => {
        audioOnly = !audioOnly;
        audioButton.setAttribute("aria-pressed", String(audioOnly));
        stage.classList.toggle("audio-only", audioOnly);
        media.setPrefs(layerForWidth(window.innerWidth), !audioOnly);
        for (const t of [cameraTile, screenTile, ...others.querySelectorAll<HTMLElement>("figure")]) if (audioOnly) t.hidden = true;
      },
    },
    "Audio only",
  );
  const handButton = h(
    "button",
    { type: "button", id: "raise-hand", "aria-pressed": "false", onclick: () => room.say({ type: "raise_hand", raised: !hands.has(me.user_id) }) },
    "Raise hand",
  );

  const tabs = ["chat", "qa", "people", "hands"] as const;
  const tabLabels = { chat: "Chat", qa: "Q&A", people: "People", hands: "Hands" };
  const panels: Record<(typeof tabs)[number], HTMLElement> = {
    chat: h(
      "section",
      { class: "panel", id: "panel-chat", role: "tabpanel", "aria-labelledby": "tab-chat" },
      chatList,
      sendForm(chatInput, "Send", (text) => room.say({ type: "chat", text })),
    ),
    qa: h(
      "section",
      { class: "panel", id: "panel-qa", role: "tabpanel", "aria-labelledby": "tab-qa" },
      qList,
      sendForm(qInput, "Ask", (text) => {
        const id = Array.from(crypto.getRandomValues(new Uint8Array(8)), (b) => b.toString(16).padStart(2, "0")).join("");
        room.say({ type: "question", id, text });
      }),
    ),
    people: h(
      "section",
      { class: "panel", id: "panel-people", role: "tabpanel", "aria-labelledby": "tab-people" },
      h(
        "form",
        {
          class: "row",
          onsubmit: (ev: Event) => {
            ev.preventDefault();
            myName = nameInput.value.trim().slice(0, 64);
            localStorage.setItem("cloister.name", myName);
            if (myName !== "") room.say({ type: "profile", display_name: myName });
          },
        },
        nameInput,
        h("button", { type: "submit" }, "Set name"),
      ),
      h("p", { class: "muted" }, "Your name goes to the people in this session only, encrypted. Compare fingerprints and the safety code out of band to be sure nobody else is listening."),
      people,
    ),
    hands: h("section", { class: "panel", id: "panel-hands", role: "tabpanel", "aria-labelledby": "tab-hands" }, teacher ? null : handButton, handList),
  };
  const tabButtons = tabs.map((t, i) =>
    h(
      "button",
      {
        type: "button",
        role: "tab",
        id: `tab-${t}`,
        "aria-controls": `panel-${t}`,
        "aria-selected": i === 0 ? "true" : "false",
        tabindex: i === 0 ? 0 : -1,
        onclick: () => select(t),
        onkeydown: (ev: Event) => {
          const k = (ev as KeyboardEvent).key;
          if (k !== "ArrowRight" && k !== "ArrowLeft") return;
          const next = tabs[(i + (k === "ArrowRight" ? 1 : tabs.length - 1)) % tabs.length]!;
          select(next);
          document.getElementById(`tab-${next}`)?.focus();
        },
      },
      tabLabels[t],
    ),
  );
  function select(t: (typeof tabs)[number]): void {
    for (const [i, name] of tabs.entries()) {
      const on = name === t;
      tabButtons[i]!.setAttribute("aria-selected", on ? "true" : "false");
      tabButtons[i]!.tabIndex = on ? 0 : -1;
      panels[name].hidden = !on;
    }
  }

  mount(
    h(
      "div",
      { class: "room" + (teacher ? " teacher" : " student") },
      h(
        "header",
        { class: "room-head" },
        h("h1", {}, teacher ? "Your live session" : "Live session"),
        indicator,
        h("div", { class: "safety-box" }, h("span", { class: "muted" }, "Safety code "), safety),
        conn,
      ),
      err,
      h("div", { class: "stage-wrap" }, stage, local, h("div", { class: "row controls-row" }, publishControls, audioButton)),
      h("aside", { class: "side" }, h("div", { role: "tablist", "aria-label": "Room panels", class: "tabs" }, ...tabButtons), ...Object.values(panels)),
    ),
  );
  select("chat");
  syncButtons();
  renderHands();
  renderChat();
  renderQuestions();
  if (teacher) tabButtons[3]!.textContent = "Hands";

  const onResize = () => media.setPrefs(layerForWidth(window.innerWidth), !audioOnly);
  window.addEventListener("resize", onResize);
  media.setPrefs(layerForWidth(window.innerWidth), true);
  const timer = window.setInterval(renderIndicator, 1000);
  current = { room, media, store, timer, onResize };

  // A read-only handle for tests and for the curious (nothing secret: counts, the safety code, states).
  /** Per-mid figures keyed `teacher:camera` (a course teacher) or `<device>:<source>`, the largest where two share one. */
  const bySender = <T>(byMid: Record<string, T>, value: (v: T) => number): Record<string, number> => {
    const out: Record<string, number> = {};
    for (const [mid, v] of Object.entries(byMid)) {
      const r = media.remote(mid);
      if (r === undefined) continue;
      const u = deviceUser(r.device);
      const key = `${u !== undefined && courseTeachers.includes(u) ? "teacher" : r.device}:${r.source}`;
      out[key] = Math.max(out[key] ?? 0, value(v));
    }
    return out;
  };
  (window as { cloisterDebug?: unknown }).cloisterDebug = {
    status: () => lastStatus,
    marks: () => ({ ...marks }),
    safetyCode: () => info?.safety_code ?? null,
    epoch: () => info?.epoch ?? null,
    device: () => room.device,
    indicator: () => indicator.textContent,
    receivers: () => receivers,
    decoded: async () => bySender(await media.inboundVideo(), (v) => v.decoded),
    widths: async () => bySender(await media.inboundVideo(), (v) => v.width),
    wrongKey: () => {
      const c = info;
      if (c !== null) media.post({ t: "wrong_key", epoch: BigInt(c.epoch), leaf: c.roster.find((r) => r.device_id === room.device)?.leaf ?? 0 });
    },
    dropConnection: () => room.dropConnection(),
    dropMediaPaths: () => media.dropPaths(),
    outbound: () => media.outbound(),
    mediaStates: () => media.states(),
    audioPackets: () => media.audioPackets(),
  };
  await room.start();
}
