// Live media through the blind SFU: one publish connection (microphone, camera in three simulcast layers, screen)
// and one subscribe connection per device. Every encoded frame is sealed or opened in the media worker
// (RTCRtpScriptTransform, or createEncodedStreams where that is missing); the SFU sees only SFrame ciphertext.
import { mark } from "./marks";
import { coreModule } from "./core";
import type { FromWorker, ReceiveOptions, ReceiverStats, SendOptions, ToWorker } from "./e2ee-worker";
import type { MediaSource, MediaTrack, ServerFrame, Unsent } from "./wire";

export type Source = "mic" | "camera" | "screen";

/** SFrame contexts of this device's streams (the native client uses 0 for the microphone, 1.. for camera layers). */
const CONTEXT: Record<Source, number> = { mic: 0, camera: 8, screen: 12 };

/** The camera's simulcast layers, low to high, as the SFU names them (q, h, f). */
const LAYERS: RTCRtpEncodingParameters[] = [
  { rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: "f", scaleResolutionDownBy: 1, maxBitrate: 1_200_000 },
];

export interface Remote {
  mid: string;
  device: string;
  source: string;
  track: MediaStreamTrack;
  receiver: RTCRtpReceiver;
}

export interface MediaEvents {
  signal(f: Unsent): number;
  remote(r: Remote): void;
  remoteGone(mid: string): void;
  stats(receivers: ReceiverStats[], sealed: number, unsealed: number): void;
  error(message: string): void;
}

type Legacy = (RTCRtpSender | RTCRtpReceiver) & { createEncodedStreams?: () => { readable: ReadableStream; writable: WritableStream } };

const scriptTransform = typeof (globalThis as { RTCRtpScriptTransform?: unknown }).RTCRtpScriptTransform === "function";

/** Why the SFU ended a connection when the path failed rather than the right to it: the page makes the connection
 * again, after a backoff. */
const TRANSIENT = new Set(["disconnected", "ice_timeout", "internal_error", "media_unavailable"]);
const RETRY_FIRST_MS = 500;
const RETRY_MAX_MS = 8000;

function gathered(pc: RTCPeerConnection): Promise<void> {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState === "complete") {
        pc.removeEventListener("icegatheringstatechange", done);
        resolve();
      }
    };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, 3000);
  });
}

function preferVp8(t: RTCRtpTransceiver): void {
  const caps = RTCRtpSender.getCapabilities("video");
  if (caps === null || typeof t.setCodecPreferences !== "function") return;
  const vp8 = caps.codecs.filter((c) => /vp8|rtx/i.test(c.mimeType));
  if (vp8.length > 0) t.setCodecPreferences(vp8);
}

export class Media {
  readonly worker: Worker;
  private pub: RTCPeerConnection | null = null;
  private pubPeer: number | null = null;
  private pubRequest: number | null = null;
  private senders = new Map<Source, RTCRtpSender>();
  private tracks = new Map<Source, MediaStreamTrack>();
  private sub: RTCPeerConnection | null = null;
  private subPeer: number | null = null;
  private subRequest: number | null = null;
  private trackInfo = new Map<string, MediaTrack>();
  /** Settles once the subscribe connection's ICE checks run, ICE failed, or the connection is gone: a Welcome waits
   * for it (at most 300 ms, see `checking`), because Chromium's ICE checks do not start while the page's main thread
   * is busy in the core (measured: checks 77 ms after the answer when the Welcome was processed at once, 17 ms when
   * it waited); once they run, ICE and DTLS finish beside the core's work. */
  private checksDue: { running: Promise<void>; settle: () => void } | null = null;
  private remotes = new Map<string, Remote>();
  private prefs = { maxLayer: 2, video: true };
  private publishing = false;
  private ended = false;
  /** Pending remakes of a failed connection and how many failed in a row (reset once one is answered). */
  private retry = { sub: null as number | null, pub: null as number | null, subFails: 0, pubFails: 0 };

  constructor(
    readonly session: string,
    private readonly on: MediaEvents,
  ) {
    this.worker = new Worker(new URL("./e2ee-worker.ts", import.meta.url), { type: "module", name: "cloister-e2ee" });
    this.worker.onmessage = (ev: MessageEvent<FromWorker>) => {
      const m = ev.data;
      if (m.t === "stats") this.on.stats(m.receivers, m.sealed, m.unsealed);
      else if (m.t === "first") mark(`${m.what === "in" ? "frame_in" : "frame_opened"}_${m.source}`, m.at - performance.timeOrigin);
    };
    // The worker instantiates the page's compiled core (or, if the page could not compile it, compiles its own).
    coreModule().then(
      (module) => this.worker.postMessage({ t: "core", module } satisfies ToWorker),
      () => this.worker.postMessage({ t: "core", module: null } satisfies ToWorker),
    );
  }

  post(m: ToWorker, transfer: Transferable[] = []): void {
    this.worker.postMessage(m, transfer);
  }

  /** Puts the sealing (sender) or opening (receiver) transform on an RTP sender or receiver. */
  private transformWith(target: RTCRtpSender | RTCRtpReceiver, o: SendOptions | ReceiveOptions): void {
    if (scriptTransform) {
      target.transform = new RTCRtpScriptTransform(this.worker, o);
    } else {
      const s = (target as Legacy).createEncodedStreams?.();
      if (s === undefined) throw new Error(`this browser cannot ${o.op === "seal" ? "encrypt" : "decrypt"} media end to end`);
      this.post({ t: "streams", options: o, readable: s.readable, writable: s.writable }, [s.readable, s.writable]);
    }
  }

  private newPc(): RTCPeerConnection {
    const legacy = !scriptTransform;
    const config: RTCConfiguration & { encodedInsertableStreams?: boolean } = {
      bundlePolicy: "max-bundle",
      rtcpMuxPolicy: "require",
      iceServers: [],
    };
    if (legacy) config.encodedInsertableStreams = true;
    return new RTCPeerConnection(config);
  }

  /** Starts publishing: microphone, camera (simulcast) and a screen slot, each sealed in the worker. */
  async publish(devices: { camera: boolean; mic: boolean }): Promise<void> {
    if (this.publishing) return;
    this.publishing = true;
    const pc = this.newPc();
    this.pub = pc;
    const sources: MediaSource[] = [];
    const add = (source: Source, kind: "audio" | "video", encodings?: RTCRtpEncodingParameters[]) => {
      const init: RTCRtpTransceiverInit = { direction: "sendonly" };
      if (encodings !== undefined) init.sendEncodings = encodings;
      const t = pc.addTransceiver(kind, init);
      if (kind === "video") preferVp8(t);
      this.senders.set(source, t.sender);
      this.transformWith(t.sender, { op: "seal", codec: kind === "audio" ? "opus" : "vp8", context: CONTEXT[source], kind, source });
      return t;
    };
    const tMic = add("mic", "audio");
    const tCam = add("camera", "video", LAYERS);
    const tScreen = add("screen", "video");
    await this.setTrack("mic", devices.mic);
    await this.setTrack("camera", devices.camera);
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    await gathered(pc);
    for (const [t, source] of [
      [tMic, "mic"],
      [tCam, "camera"],
      [tScreen, "screen"],
    ] as const) {
      if (t.mid !== null) sources.push({ mid: t.mid, source });
    }
    const sdp = pc.localDescription?.sdp ?? "";
    this.pubRequest = this.on.signal({ t: "media_publish", session: this.session, sdp, sources });
  }

  /** Turns a source on or off (off stops the device: its light goes out). */
  async setTrack(source: Source, on: boolean): Promise<boolean> {
    const sender = this.senders.get(source);
    const old = this.tracks.get(source);
    if (!on) {
      old?.stop();
      this.tracks.delete(source);
      await sender?.replaceTrack(null);
      return false;
    }
    if (old !== undefined && old.readyState === "live") return true;
    let track: MediaStreamTrack | undefined;
    try {
      if (source === "screen") {
        const s = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: 15 }, audio: false });
        track = s.getVideoTracks()[0];
      } else if (source === "camera") {
        const s = await navigator.mediaDevices.getUserMedia({ video: { width: 1280, height: 720, frameRate: 30 } });
        track = s.getVideoTracks()[0];
      } else {
        const s = await navigator.mediaDevices.getUserMedia({ audio: true });
        track = s.getAudioTracks()[0];
      }
    } catch (e) {
      this.on.error(`${source}: ${e instanceof Error ? e.message : String(e)}`);
      return false;
    }
    if (track === undefined) return false;
    if (source === "screen") track.contentHint = "detail";
    track.addEventListener("ended", () => {
      if (this.tracks.get(source) === track) {
        this.tracks.delete(source);
        void sender?.replaceTrack(null);
      }
    });
    this.tracks.set(source, track);
    await sender?.replaceTrack(track);
    return true;
  }

  localTrack(source: Source): MediaStreamTrack | undefined {
    return this.tracks.get(source);
  }

  isPublishing(): boolean {
    return this.publishing;
  }

  /** Stops publishing (taken off stage). */
  unpublish(): void {
    if (this.retry.pub !== null) window.clearTimeout(this.retry.pub);
    this.retry.pub = null;
    for (const t of this.tracks.values()) t.stop();
    this.tracks.clear();
    this.senders.clear();
    if (this.pubPeer !== null) this.on.signal({ t: "media_close", peer: this.pubPeer });
    this.pub?.close();
    this.pub = null;
    this.pubPeer = null;
    this.publishing = false;
  }

  subscribe(): void {
    if (this.sub !== null) return;
    // Asked for first: the SFU's offer comes back over the WebSocket, after this task, so the request need not
    // wait behind the page's first peer connection (about 25 ms of the main thread in Chromium, measured).
    this.subRequest = this.on.signal({ t: "media_subscribe", session: this.session });
    const pc = this.newPc();
    this.sub = pc;
    let settle = () => {};
    const running = new Promise<void>((ok) => (settle = ok));
    this.checksDue = { running, settle };
    // Where the time between the answer and the connection goes (the first-frame benchmark reads these marks).
    pc.addEventListener("connectionstatechange", () => {
      if (pc.connectionState === "connected") mark("sub_connected");
    });
    pc.addEventListener("iceconnectionstatechange", () => {
      mark(`sub_ice_${pc.iceConnectionState}`);
      if (this.sub === pc && pc.iceConnectionState !== "new") this.settleChecks();
    });
    pc.ontrack = (ev) => {
      const mid = ev.transceiver.mid ?? "";
      const info = this.trackInfo.get(mid);
      const codec = ev.track.kind === "audio" ? "opus" : "vp8";
      this.transformWith(ev.receiver, {
        op: "open",
        codec,
        device: info?.device ?? "",
        source: info?.source ?? ev.track.kind,
        key: mid,
      });
      const r: Remote = {
        mid,
        device: info?.device ?? "",
        source: info?.source ?? ev.track.kind,
        track: ev.track,
        receiver: ev.receiver,
      };
      this.remotes.set(mid, r);
      this.on.remote(r);
    };
  }

  /** Highest simulcast layer wanted and whether video is wanted at all (audio-only mode). */
  setPrefs(maxLayer: number, video: boolean): void {
    this.prefs = { maxLayer, video };
    if (this.subPeer !== null) this.on.signal({ t: "media_prefs", peer: this.subPeer, max_layer: maxLayer, video });
  }

  remote(mid: string): Remote | undefined {
    return this.remotes.get(mid);
  }

  remoteTracks(): Remote[] {
    return [...this.remotes.values()];
  }

  /** The server's media frames. */
  async onSignal(f: ServerFrame): Promise<void> {
    try {
      await this.signal(f);
    } catch (e) {
      this.on.error(e instanceof Error ? e.message : String(e));
    }
  }

  private async signal(f: ServerFrame): Promise<void> {
    switch (f.t) {
      case "media_answer":
        if (f.id === this.pubRequest && this.pub !== null) {
          this.pubPeer = f.peer;
          this.retry.pubFails = 0;
          await this.pub.setRemoteDescription({ type: "answer", sdp: f.sdp });
        }
        return;
      case "media_opened":
        if (f.id === this.subRequest) {
          this.subPeer = f.peer;
          this.retry.subFails = 0;
          if (this.prefs.maxLayer !== 2 || !this.prefs.video) this.setPrefs(this.prefs.maxLayer, this.prefs.video);
        }
        return;
      case "media_offer": {
        if (this.sub === null || f.peer !== this.subPeer) return;
        for (const t of f.tracks) this.trackInfo.set(t.mid, t);
        mark("sub_offer");
        try {
          await this.sub.setRemoteDescription({ type: "offer", sdp: f.sdp });
        } catch {
          // An offer this connection cannot take (the SFU stops every m-line when the last publisher goes, and a
          // bundled connection has no transport left): start a new subscription, which gets the room as it is.
          this.on.signal({ t: "media_close", peer: f.peer });
          this.resetSubscribe();
          this.subscribe();
          return;
        }
        mark("sub_remote_set");
        const answer = await this.sub.createAnswer();
        // The answer goes to the SFU before it is applied here: applying it starts the browser's ICE checks, and a
        // DTLS hello that reaches the SFU before the answer is dropped there (and sent again only ~50 ms later).
        // No wait for candidate gathering either: the SFU offers its own candidate, and the browser's first
        // connectivity check tells it our address (a peer-reflexive candidate; the browser's host candidates are
        // mDNS names it could not use anyway).
        mark("sub_answer");
        this.on.signal({ t: "media_answer", peer: f.peer, sdp: answer.sdp ?? "" });
        await this.sub.setLocalDescription(answer);
        for (const mid of [...this.remotes.keys()]) {
          if (!f.tracks.some((t) => t.mid === mid)) {
            this.remotes.delete(mid);
            this.on.remoteGone(mid);
          }
        }
        return;
      }
      case "media_closed":
        if (f.peer === this.subPeer) {
          this.resetSubscribe();
          if (TRANSIENT.has(f.code)) this.again("sub");
        }
        if (f.peer === this.pubPeer) {
          const was = this.publishing;
          if (was && TRANSIENT.has(f.code)) {
            // The path failed: publish again with the same devices (their lights stay on).
            this.pub?.close();
            this.pub = null;
            this.pubPeer = null;
            this.again("pub");
            return;
          }
          this.unpublish();
          if (was && f.code !== "off_stage" && f.code !== "not_a_member") this.on.error(`publishing stopped: ${f.code}`);
        }
        return;
      case "error":
        if (f.id === this.pubRequest) {
          this.on.error(`publishing refused: ${f.message}`);
          this.unpublish();
        } else if (f.id === this.subRequest) {
          this.on.error(`receiving refused: ${f.message}`);
          this.resetSubscribe();
        }
        return;
      default:
        return;
    }
  }

  /** Resolves once the subscribe connection's ICE checks run (or ICE failed), at once when no connection is
   * coming, or after `ms`. From then on Chromium's network thread carries ICE and DTLS on by itself: the page's
   * main thread may be busy (in the wasm core) without holding the connection up, which it does before that. */
  checking(ms: number): Promise<void> {
    if (this.checksDue === null) return Promise.resolve();
    return Promise.race([this.checksDue.running, new Promise<void>((ok) => setTimeout(ok, ms))]);
  }

  /** Lets a Welcome waiting on `checking` go: the checks run, ICE failed, or the connection is no longer this page's. */
  private settleChecks(): void {
    this.checksDue?.settle();
    this.checksDue = null;
  }

  private resetSubscribe(): void {
    this.settleChecks();
    this.sub?.close();
    this.sub = null;
    this.subPeer = null;
    for (const mid of this.remotes.keys()) this.on.remoteGone(mid);
    this.remotes.clear();
  }

  /** Makes a failed subscribe or publish connection again after a backoff (0.5 s, doubling up to 8 s). */
  private again(which: "sub" | "pub"): void {
    if (this.ended || this.retry[which] !== null) return;
    const fails = which === "sub" ? this.retry.subFails++ : this.retry.pubFails++;
    const wait = Math.min(RETRY_MAX_MS, RETRY_FIRST_MS * 2 ** fails);
    this.retry[which] = window.setTimeout(() => {
      this.retry[which] = null;
      if (this.ended) return;
      if (which === "sub") this.subscribe();
      else if (this.publishing && this.pubPeer === null) void this.republish();
    }, wait);
  }

  private cancelRetries(): void {
    for (const which of ["sub", "pub"] as const) {
      const t = this.retry[which];
      if (t !== null) window.clearTimeout(t);
      this.retry[which] = null;
    }
  }

  /** A new publish connection carrying the tracks that are on now. */
  private async republish(): Promise<void> {
    this.pub?.close();
    this.pub = null;
    this.pubPeer = null;
    this.publishing = false;
    this.senders.clear();
    const keep = new Map(this.tracks);
    this.tracks.clear();
    await this.publish({ camera: false, mic: false });
    for (const [source, track] of keep) {
      if (track.readyState === "live") {
        this.tracks.set(source, track);
        await this.senders.get(source)?.replaceTrack(track);
      }
    }
  }

  /** After the WebSocket came back: the server closed this connection's media; make it again. */
  async reconnect(): Promise<void> {
    this.cancelRetries();
    this.resetSubscribe();
    if (this.publishing) await this.republish();
    this.subscribe();
  }

  /** Drops both connections without telling the server, as a failed network path would (for the tests): the SFU
   * notices the silence and ends them, and the page makes them again. */
  dropPaths(): void {
    this.sub?.close();
    this.pub?.close();
  }

  /** Connection states, for the tests and the curious. */
  states(): { publish: string | null; publishPeer: number | null; subscribe: string | null; subscribePeer: number | null } {
    return {
      publish: this.pub?.connectionState ?? null,
      publishPeer: this.pubPeer,
      subscribe: this.sub?.connectionState ?? null,
      subscribePeer: this.subPeer,
    };
  }

  /** The camera's encoded layers (outbound-rtp by rid, from getStats): what simulcast sends. */
  async outbound(): Promise<{ rid: string; framesEncoded: number; width: number }[]> {
    if (this.pub === null) return [];
    const out: { rid: string; framesEncoded: number; width: number }[] = [];
    const stats = await this.pub.getStats();
    stats.forEach((s: { type: string; kind?: string; rid?: string; framesEncoded?: number; frameWidth?: number }) => {
      if (s.type === "outbound-rtp" && s.kind === "video" && s.rid !== undefined) {
        out.push({ rid: s.rid, framesEncoded: s.framesEncoded ?? 0, width: s.frameWidth ?? 0 });
      }
    });
    return out.sort((a, b) => a.width - b.width);
  }

  /** Audio packets received so far (all inbound audio), from getStats. */
  async audioPackets(): Promise<number> {
    if (this.sub === null) return 0;
    let n = 0;
    const stats = await this.sub.getStats();
    stats.forEach((s: { type: string; kind?: string; packetsReceived?: number }) => {
      if (s.type === "inbound-rtp" && s.kind === "audio") n += s.packetsReceived ?? 0;
    });
    return n;
  }

  /** framesDecoded of each received video track (from getStats), by mid. */
  /** Per received video mid: frames decoded and the width of the last one (0 before any). */
  async inboundVideo(): Promise<Record<string, { decoded: number; width: number }>> {
    const out: Record<string, { decoded: number; width: number }> = {};
    if (this.sub === null) return out;
    const stats = await this.sub.getStats();
    stats.forEach((s: { type: string; kind?: string; mid?: string; framesDecoded?: number; frameWidth?: number }) => {
      if (s.type === "inbound-rtp" && s.kind === "video" && s.mid !== undefined) {
        out[s.mid] = { decoded: s.framesDecoded ?? 0, width: s.frameWidth ?? 0 };
      }
    });
    return out;
  }

  close(): void {
    this.ended = true;
    this.cancelRetries();
    this.unpublish();
    this.resetSubscribe();
    this.worker.terminate();
  }
}
