// The media worker: every sender's and receiver's encoded frames pass through here (RTCRtpScriptTransform, or
// the createEncodedStreams fallback's streams posted in). Sealing and opening use the wasm core's MediaKeys with
// the epoch keys the page hands over; a frame without a key is dropped, never sent in the clear. A received frame
// whose epoch has no key yet waits for it (a joining member's media starts while its Welcome is processed, and a
// sender may switch to a new epoch a moment before this page has its key), in order, for at most HOLD_MS; held
// frames that never open count as failed, except those that came before this page had held keys for HOLD_MS (a
// joiner may get some sealed in the epoch before its own), which are dropped.
import { loadCore, MediaKeys } from "./core";

export type Codec = "vp8" | "opus";

export interface SendOptions {
  op: "seal";
  codec: Codec;
  context: number;
  kind: "audio" | "video";
  source: string;
}

export interface ReceiveOptions {
  op: "open";
  codec: Codec;
  device: string;
  source: string;
  key: string; // the page's name for this receiver (mid)
}

type Options = SendOptions | ReceiveOptions;

export type ToWorker =
  // First from the page: its compiled core (null: compile one here).
  | { t: "core"; module: WebAssembly.Module | null }
  | { t: "key"; epoch: bigint; leaf: number; key: Uint8Array; send: boolean }
  | { t: "wrong_key"; epoch: bigint; leaf: number }
  | { t: "streams"; options: Options; readable: ReadableStream; writable: WritableStream };

export interface ReceiverStats {
  key: string;
  device: string;
  source: string;
  opened: number;
  failed: number;
  /** Frames dropped as already opened (or too far behind), or as not for this device (`giveUp`): not failures. */
  dropped: number;
  /** Frames that came before their epoch's key and waited for it (opened or failed after). */
  held: number;
  lastError: string;
  lastOpenedAt: number;
  lastFailedAt: number;
}

export type FromWorker =
  | { t: "ready" }
  | { t: "stats"; receivers: ReceiverStats[]; sealed: number; unsealed: number }
  // A receiver's first frame in, and its first frame opened (wall clock, ms: performance.timeOrigin + now()).
  | { t: "first"; key: string; source: string; what: "in" | "opened"; at: number };

interface EncodedFrame {
  data: ArrayBuffer;
  type?: string;
}

interface ScriptTransformer {
  readable: ReadableStream<EncodedFrame>;
  writable: WritableStream<EncodedFrame>;
  options: Options;
  generateKeyFrame?: () => Promise<void>;
  sendKeyFrameRequest?: () => Promise<void>;
}

interface Scope {
  onmessage: ((ev: MessageEvent<ToWorker>) => void) | null;
  onrtctransform: ((ev: { transformer: ScriptTransformer }) => void) | null;
  postMessage(m: FromWorker): void;
}

const scope = self as unknown as Scope;
let keys: MediaKeys | null = null;
let haveKey = false;
let wrongKeys = false;

/** How long, and how many, received frames may wait for their epoch's key before they are given up. The time
 * runs from the frame's arrival or from this page's first key, whichever is later: a joiner's media starts before
 * its Welcome, however long that takes (the count still bounds what waits). */
const HOLD_MS = 3000;
const HOLD_MAX = 400;
/** When this page got its first media key (`now()`), null before. */
let keysSince: number | null = null;
/** What a held frame that never got its key counts as failed with (shown in the receiver's stats). */
const NO_KEY = "no key for that epoch";

interface Receiver extends ReceiverStats {
  transformer: ScriptTransformer | null;
  askedKeyFrame: number;
  codec: Codec;
  /** Frames waiting for their epoch's key, oldest first, with when each came. */
  waiting: { frame: EncodedFrame; at: number }[];
  ctrl: TransformStreamDefaultController<EncodedFrame> | null;
}
const receivers = new Map<string, Receiver>();
const senders = new Set<ScriptTransformer>();
let sealed = 0;
let unsealed = 0;

function now(): number {
  return Date.now();
}

function seal(o: SendOptions) {
  return new TransformStream<EncodedFrame, EncodedFrame>({
    transform(frame, ctrl) {
      if (keys === null || !haveKey) {
        unsealed++;
        return; // no key yet: drop, never send clear media
      }
      try {
        const out = keys.seal(o.context, o.codec, new Uint8Array(frame.data));
        frame.data = out.buffer as ArrayBuffer;
        sealed++;
        ctrl.enqueue(frame);
      } catch {
        unsealed++;
      }
    },
  });
}

function first(o: { key: string; source: string }, what: "in" | "opened"): void {
  scope.postMessage({ t: "first", key: o.key, source: o.source, what, at: performance.timeOrigin + performance.now() });
}

function fail(st: Receiver, why: string): void {
  st.failed++;
  st.lastError = why;
  st.lastFailedAt = now();
}

/** The name of the core's error for a frame whose epoch has no key (asked once: frames are held by it). */
let noKeyName: string | undefined;

/** Opens `frame` and passes it on (or drops a replay, or counts a failure); "no_key" when its epoch has no key,
 * leaving the frame as it was. */
function tryOpen(st: Receiver, frame: EncodedFrame): "done" | "no_key" {
  if (keys === null) return "no_key";
  let out: Uint8Array | undefined;
  try {
    out = keys.open(st.codec, new Uint8Array(frame.data), now());
  } catch (e) {
    // The core names the one failure a frame may wait out: its epoch has no key here (yet).
    noKeyName ??= MediaKeys.no_key_error();
    if (e instanceof Error && e.name === noKeyName) return "no_key";
    fail(st, e instanceof Error ? e.message : String(e));
    return "done";
  }
  if (out === undefined) {
    st.dropped++;
    return "done";
  }
  frame.data = out.buffer as ArrayBuffer;
  if (st.opened++ === 0) first(st, "opened");
  st.lastOpenedAt = now();
  try {
    st.ctrl?.enqueue(frame); // outside `transform` when a key's arrival releases it
  } catch {
    st.waiting.length = 0; // the receiver's stream has ended: nothing more to pass on
  }
  return "done";
}

/** Gives up on a held frame that came at `at` and will not open. One that came before this page had held keys
 * for HOLD_MS is dropped: a joiner's media may start while the publisher still seals in the epoch before the commit
 * that adds it, and those frames, or their stragglers on another layer, are not for it. Any later one failed. */
function giveUp(st: Receiver, at: number): void {
  if (keysSince === null || at < keysSince + HOLD_MS) st.dropped++;
  else fail(st, NO_KEY);
}

/** Passes on the held frames that open now, in order, up to the first that still has no key; frames that waited
 * too long (or too many) are given up (`giveUp`). */
function release(st: Receiver): void {
  const t = now();
  while (st.waiting.length > 0) {
    const w = st.waiting[0]!;
    if (tryOpen(st, w.frame) === "no_key") {
      const since = keysSince === null ? t : Math.max(w.at, keysSince);
      if (t - since < HOLD_MS && st.waiting.length <= HOLD_MAX) return;
      giveUp(st, w.at);
    }
    st.waiting.shift();
  }
}

function open(o: ReceiveOptions, t: ScriptTransformer | null) {
  const st: Receiver = {
    key: o.key,
    device: o.device,
    source: o.source,
    opened: 0,
    failed: 0,
    dropped: 0,
    held: 0,
    lastError: "",
    lastOpenedAt: 0,
    lastFailedAt: 0,
    transformer: t,
    askedKeyFrame: 0,
    codec: o.codec,
    waiting: [],
    ctrl: null,
  };
  receivers.set(o.key, st);
  let seen = false;
  return new TransformStream<EncodedFrame, EncodedFrame>({
    transform(frame, ctrl) {
      st.ctrl = ctrl;
      if (!seen) {
        seen = true;
        first(o, "in");
      }
      const opened = st.opened;
      if (tryOpen(st, frame) === "done") {
        // Its epoch has a key and the held frames' have none (a key's arrival releases them), so none will open:
        // they are from an epoch before this device's first, retired, or came out of order across a key change.
        if (st.opened > opened) for (; st.waiting.length > 0; st.waiting.shift()) giveUp(st, st.waiting[0]!.at);
        return;
      }
      st.held++;
      st.waiting.push({ frame, at: now() });
      release(st);
    },
  });
}

function attach(options: Options, readable: ReadableStream, writable: WritableStream, t: ScriptTransformer | null) {
  const ts = options.op === "seal" ? seal(options) : open(options, t);
  if (options.op === "seal" && t !== null) senders.add(t);
  readable.pipeThrough(ts).pipeTo(writable).catch(() => {
    if (options.op === "open") receivers.delete(options.key);
    if (t !== null) senders.delete(t);
  });
}

// Key frames after a key change: senders make one (new receivers can start), receivers that failed ask for one.
function afterKeyChange() {
  for (const s of senders) {
    if ((s.options as SendOptions).kind === "video") s.generateKeyFrame?.().catch(() => {});
  }
  for (const r of receivers.values()) {
    if (r.lastFailedAt > r.lastOpenedAt && r.transformer !== null && now() - r.askedKeyFrame > 500) {
      r.askedKeyFrame = now();
      r.transformer.sendKeyFrameRequest?.().catch(() => {});
    }
  }
}

let coreFrom: (m: WebAssembly.Module | null) => void = () => {};
const core = new Promise<WebAssembly.Module | null>((ok) => (coreFrom = ok)).then((m) => loadCore(m ?? undefined));

scope.onrtctransform = (ev) => {
  const t = ev.transformer;
  void core.then(() => attach(t.options, t.readable, t.writable, t));
};

scope.onmessage = (ev) => {
  const m = ev.data;
  if (m.t === "core") {
    coreFrom(m.module);
    return;
  }
  void core.then(() => {
    if (m.t === "key") {
      keys ??= new MediaKeys(m.leaf);
      const key = wrongKeys ? crypto.getRandomValues(new Uint8Array(16)) : m.key;
      if (m.send) keys.install(m.epoch, m.leaf, key, now());
      else keys.install_receive(m.epoch, m.leaf, key, now());
      m.key.fill(0);
      keysSince ??= now();
      haveKey ||= m.send;
      for (const r of receivers.values()) release(r);
      afterKeyChange();
    } else if (m.t === "wrong_key") {
      // Test and demonstration hook: this page's keys for the epoch are replaced by random ones, so nothing
      // it receives opens (and what it sends opens nowhere), in this epoch and every later one.
      wrongKeys = true;
      keys?.free();
      keys = new MediaKeys(m.leaf);
      keys.install(m.epoch, m.leaf, crypto.getRandomValues(new Uint8Array(16)), now());
      keysSince ??= now();
      haveKey = true;
    } else if (m.t === "streams") {
      attach(m.options, m.readable, m.writable, null);
    }
  });
};

setInterval(() => {
  for (const r of receivers.values()) release(r); // frames that waited too long count as failed
  const list: ReceiverStats[] = [];
  for (const r of receivers.values()) {
    list.push({
      key: r.key,
      device: r.device,
      source: r.source,
      opened: r.opened,
      failed: r.failed,
      dropped: r.dropped,
      held: r.held,
      lastError: r.lastError,
      lastOpenedAt: r.lastOpenedAt,
      lastFailedAt: r.lastFailedAt,
    });
  }
  scope.postMessage({ t: "stats", receivers: list, sealed, unsealed });
}, 500);

void core.then(() => scope.postMessage({ t: "ready" }));
