// The media worker: every sender's and receiver's encoded frames pass through here (RTCRtpScriptTransform, or
// the createEncodedStreams fallback's streams posted in). Sealing and opening use the wasm core's MediaKeys with
// the epoch keys the page hands over; a frame without a key is dropped, never sent in the clear.
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
  /** Frames dropped as already opened (or too far behind): duplicates, not failures. */
  dropped: number;
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
const receivers = new Map<string, ReceiverStats & { transformer: ScriptTransformer | null; askedKeyFrame: number }>();
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

function first(o: ReceiveOptions, what: "in" | "opened"): void {
  scope.postMessage({ t: "first", key: o.key, source: o.source, what, at: performance.timeOrigin + performance.now() });
}

function open(o: ReceiveOptions, t: ScriptTransformer | null) {
  const st = {
    key: o.key,
    device: o.device,
    source: o.source,
    opened: 0,
    failed: 0,
    dropped: 0,
    lastError: "",
    lastOpenedAt: 0,
    lastFailedAt: 0,
    transformer: t,
    askedKeyFrame: 0,
  };
  receivers.set(o.key, st);
  let seen = false;
  return new TransformStream<EncodedFrame, EncodedFrame>({
    transform(frame, ctrl) {
      if (!seen) {
        seen = true;
        first(o, "in");
      }
      if (keys === null) {
        st.failed++;
        st.lastError = "no keys yet";
        st.lastFailedAt = now();
        return;
      }
      try {
        const out = keys.open(o.codec, new Uint8Array(frame.data), now());
        if (out === undefined) {
          st.dropped++;
          return;
        }
        frame.data = out.buffer as ArrayBuffer;
        if (st.opened++ === 0) first(o, "opened");
        st.lastOpenedAt = now();
        ctrl.enqueue(frame);
      } catch (e) {
        st.failed++;
        st.lastError = e instanceof Error ? e.message : String(e);
        st.lastFailedAt = now();
      }
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
      haveKey ||= m.send;
      afterKeyChange();
    } else if (m.t === "wrong_key") {
      // Test and demonstration hook: this page's keys for the epoch are replaced by random ones, so nothing
      // it receives opens (and what it sends opens nowhere), in this epoch and every later one.
      wrongKeys = true;
      keys?.free();
      keys = new MediaKeys(m.leaf);
      keys.install(m.epoch, m.leaf, crypto.getRandomValues(new Uint8Array(16)), now());
      haveKey = true;
    } else if (m.t === "streams") {
      attach(m.options, m.readable, m.writable, null);
    }
  });
};

setInterval(() => {
  const list: ReceiverStats[] = [];
  for (const r of receivers.values()) {
    list.push({
      key: r.key,
      device: r.device,
      source: r.source,
      opened: r.opened,
      failed: r.failed,
      dropped: r.dropped,
      lastError: r.lastError,
      lastOpenedAt: r.lastOpenedAt,
      lastFailedAt: r.lastFailedAt,
    });
  }
  scope.postMessage({ t: "stats", receivers: list, sealed, unsealed });
}, 500);

void core.then(() => scope.postMessage({ t: "ready" }));
