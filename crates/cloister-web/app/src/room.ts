// One device in one live session: the MLS group (wasm core), the delivery service over the live WebSocket, and
// the rules the native participant keeps (crates/cloister-client/src/participant.rs):
// - the log is processed in order, each entry once; the cursor survives reconnects;
// - own messages appear at their place in the log (the echo, matched by sequence number);
// - as committer: commit pending proposals when asked, send nothing else while the commit is pending, merge it only
//   once accepted, drop it when another commit won, then report the epoch's key-custody record;
// - a lost connection is resumed with a new ticket from the cursor; messages not acknowledged are sent again only
//   if the log does not hold them. Nothing typed while offline is lost: it waits in the outbox.
import { api, ApiError } from "./api";
import { Client, loadCore } from "./core";
import { mark } from "./marks";
import type { AppMessage, ClientFrame, EpochInfo, LeafReport, ServerFrame, Unsent } from "./wire";
import { stamped } from "./store";
import { b64, unb64 } from "./wire";

export type RoomStatus = "connecting" | "joining" | "live" | "reconnecting" | "removed" | "closed" | "refused";

export interface RoomEvents {
  status(s: RoomStatus, detail?: string): void;
  epoch(info: EpochInfo): void;
  said(seq: number, from: string, device: string, m: AppMessage): void;
  refused(code: string, message: string): void;
  media(f: ServerFrame): void;
  /** An epoch's media key; `send` false after a restore, for the epoch whose send counters were lost. */
  mediaKey(epoch: bigint, leaf: number, key: Uint8Array, send: boolean): void;
  /** This device asked to join the group: it may subscribe to media now, while its Welcome is on its way (what
   * arrives before the epoch's key is held in the media worker). */
  joining(): void;
  /** Resolves when a Welcome may be processed: processing it holds the page's thread, so the media connection's
   * ICE checks start first, and ICE and DTLS finish meanwhile. */
  beforeWelcome(): Promise<void>;
  reconnected(): void;
}

type Req =
  | { k: "key_packages" }
  | { k: "create" }
  | { k: "join" }
  | { k: "subscribe" }
  | { k: "chat"; m: AppMessage }
  | { k: "commit" }
  | { k: "rekey" }
  | { k: "custody" }
  | { k: "other" };

export const MEDIA_ID_BASE = 2 ** 40;

function isMedia(f: ServerFrame): boolean {
  switch (f.t) {
    case "media_answer":
    case "media_opened":
    case "media_offer":
    case "media_closed":
    case "media_layer":
    case "speaker":
    case "staged":
      return true;
    case "ok":
      return f.id >= MEDIA_ID_BASE;
    case "error":
      return f.id !== undefined && f.id >= MEDIA_ID_BASE;
    default:
      return false;
  }
}

function same(a: AppMessage, b: AppMessage): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

export class Room {
  private client: Client | null = null;
  private inGroup = false;
  private ws: WebSocket | null = null;
  private cursor = 0;
  private nextId = 1;
  private inflight = new Map<number, Req>();
  private pendingCommit: number | null = null;
  private outbox: AppMessage[] = [];
  private unacked: AppMessage[] = [];
  private own = new Map<number, AppMessage>();
  private roster = new Set<string>();
  private uploaded = false;
  /** Key packages made while the ticket was being fetched, not yet sent. */
  private keyPackages: string[] | null = null;
  private created = false;
  /** The last key package upload was refused (so the join behind it fails for want of one). */
  private kpRefused = false;
  private live = false;
  private stopped = false;
  private backoff = 250;
  private mediaId = MEDIA_ID_BASE;
  /** Restored from this tab's storage: refresh the leaf (a new epoch) before sending media again. */
  private needRekey = false;
  private saveTimer: number | null = null;
  info: EpochInfo | null = null;
  device: string;

  constructor(
    readonly session: string,
    readonly user: string,
    readonly host: boolean,
    private readonly on: RoomEvents,
    /** localStorage when this tab owns the room's state (see store.ts), else sessionStorage. */
    private readonly storage: Storage,
    /** A ticket asked for before the room was built (the router's), used by the first connection only. */
    private firstTicket?: Promise<{ ticket: string }>,
  ) {
    this.device = "web-" + Array.from(crypto.getRandomValues(new Uint8Array(6)), (b) => b.toString(16).padStart(2, "0")).join("");
  }

  /** Where the group state is kept across a reload or a closed tab. */
  private get storeKey(): string {
    return `cloister.room.${this.session}.${this.user}`;
  }

  async start(): Promise<void> {
    mark("room_start");
    await loadCore();
    mark("core_loaded");
    const saved = this.storage.getItem(this.storeKey);
    if (saved !== null) {
      try {
        const s = JSON.parse(saved) as { device: string; cursor: number; state: string };
        this.client = Client.restore(unb64(s.state));
        this.device = s.device;
        this.cursor = s.cursor;
        this.inGroup = true;
        this.created = true;
        this.uploaded = true;
        this.needRekey = true;
        const info = JSON.parse(this.client.epoch_info()) as EpochInfo;
        this.roster = new Set(info.roster.map((r) => `${r.user_id}\u0000${r.device_id}`));
        this.newEpoch(info, false);
      } catch {
        this.storage.removeItem(this.storeKey);
        this.client = null;
      }
    }
    this.client ??= new Client(this.user, this.device);
    mark("client");
    window.addEventListener("pagehide", this.saveNow);
    await this.connect();
  }

  /** Saves the group state soon (at most every 300 ms) and when the page goes away. */
  private save(): void {
    if (this.saveTimer !== null) return;
    this.saveTimer = window.setTimeout(this.saveNow, 300);
  }

  private readonly saveNow = (): void => {
    if (this.saveTimer !== null) clearTimeout(this.saveTimer);
    this.saveTimer = null;
    if (!this.inGroup || this.client === null || this.stopped) return;
    try {
      const state = b64(this.client.save());
      this.storage.setItem(this.storeKey, stamped({ device: this.device, cursor: this.cursor, state }));
    } catch {
      /* storage full or unavailable: a reload then joins afresh */
    }
  };

  private forget(): void {
    this.storage.removeItem(this.storeKey);
  }

  /** Sends an application message; it waits in the outbox while offline or while a commit is pending. */
  say(m: AppMessage): void {
    this.outbox.push(m);
    this.flush();
  }

  /** Sends a media or moderation request; returns its id. */
  sendMedia(f: Unsent): number {
    const id = this.mediaId++;
    this.raw({ ...f, id } as ClientFrame);
    return id;
  }

  /** Staff: removes every device of `user` from the session's group. */
  remove(user: string): void {
    this.sendMedia({ t: "remove", session: this.session, user });
  }

  /** Whether the WebSocket is open (media signaling can go out), caught up with the log or not. */
  connected(): boolean {
    return this.ws?.readyState === WebSocket.OPEN;
  }

  online(): boolean {
    return this.live && this.ws?.readyState === WebSocket.OPEN;
  }

  /** Test and demonstration hook: drop the connection as a network failure would. */
  dropConnection(): void {
    this.ws?.close(4000, "dropped");
  }

  close(): void {
    this.saveNow();
    window.removeEventListener("pagehide", this.saveNow);
    this.stopped = true;
    this.ws?.close(1000, "bye");
    this.on.status("closed");
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    this.on.status(this.inGroup ? "reconnecting" : "connecting");
    let ticket: string;
    try {
      mark("ticket_asked");
      const asked = this.firstTicket ?? api.ticket();
      this.firstTicket = undefined;
      ticket = (await asked).ticket;
      mark("ticket");
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) {
        this.on.status("refused", "Your sign-in expired. Sign in again.");
        return;
      }
      this.retry();
      return;
    }
    const proto = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(
      `${proto}://${location.host}/api/v1/ws?ticket=${encodeURIComponent(ticket)}&device=${encodeURIComponent(this.device)}`,
    );
    this.ws = ws;
    ws.onopen = () => mark("ws_open");
    ws.onmessage = (ev) => {
      if (typeof ev.data !== "string") return;
      let f: ServerFrame;
      try {
        f = JSON.parse(ev.data) as ServerFrame;
      } catch {
        return;
      }
      this.handle(f);
    };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.live = false;
      this.inflight.clear();
      if (!this.stopped) {
        this.on.status("reconnecting");
        this.retry();
      }
    };
    // A new device's key packages are made while the WebSocket's handshake is on its way (no frame is handled
    // before this returns).
    if (!this.inGroup && !this.uploaded && !(this.host && !this.created) && this.keyPackages === null) {
      try {
        this.keyPackages = this.client?.key_package_batch(2, true) ?? null;
        mark("kp_made");
      } catch {
        this.keyPackages = null; // made again (and any error shown) when the server is ready
      }
    }
  }

  private retry(): void {
    const wait = this.backoff;
    this.backoff = Math.min(this.backoff * 2, 2000);
    setTimeout(() => void this.connect(), wait);
  }

  private raw(f: ClientFrame): void {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(f));
  }

  private req(r: Req): number {
    const id = this.nextId++;
    this.inflight.set(id, r);
    return id;
  }

  /** Asks to join the group, uploading `keyPackages` first when given. The join goes right behind them without
   * waiting for their reply (the server serves one connection's frames in order), and so may a media subscription
   * (`joining`). */
  private join(keyPackages?: string[]): void {
    if (keyPackages !== undefined) {
      this.kpRefused = false;
      this.raw({ t: "key_packages", id: this.req({ k: "key_packages" }), key_packages: keyPackages });
    }
    this.raw({ t: "join", id: this.req({ k: "join" }), session: this.session });
    this.on.joining();
  }

  private subscribe(): void {
    this.raw({ t: "subscribe", id: this.req({ k: "subscribe" }), session: this.session, from: this.cursor });
  }

  private flush(): void {
    const c = this.client;
    while (this.pendingCommit === null && this.online() && this.inGroup && c !== null) {
      const m = this.outbox.shift();
      if (m === undefined) break;
      let bytes: Uint8Array;
      try {
        bytes = c.send(JSON.stringify(m));
      } catch (e) {
        this.on.refused("mls_send", String(e));
        continue;
      }
      this.unacked.push(m);
      this.raw({ t: "send", id: this.req({ k: "chat", m }), session: this.session, mls: b64(bytes) });
    }
  }

  private newEpoch(info: EpochInfo, send = true): LeafReport[] {
    const now = new Set(info.roster.map((r) => `${r.user_id}\u0000${r.device_id}`));
    const added = info.roster
      .filter((r) => !this.roster.has(`${r.user_id}\u0000${r.device_id}`))
      .map((r) => ({ user: r.user_id, device: r.device_id, leaf: r.leaf }));
    this.roster = now;
    this.info = info;
    const c = this.client;
    if (c !== null) {
      try {
        this.on.mediaKey(c.epoch(), c.own_leaf(), c.media_epoch_key(), send);
      } catch (e) {
        this.on.refused("media_keys", String(e));
      }
    }
    this.on.epoch(info);
    this.save();
    return added;
  }

  private custody(info: EpochInfo, leaves: LeafReport[]): void {
    this.raw({
      t: "custody",
      id: this.req({ k: "custody" }),
      session: this.session,
      epoch: info.epoch,
      roster_commitment: info.custody.roster_commitment,
      committer_leaf: info.custody.committer_leaf,
      leaves,
    });
  }

  /** A commit of this member's own leaf: a new epoch whose media keys it may send under. */
  private rekey(): void {
    const c = this.client;
    if (c === null || this.pendingCommit !== null) return;
    try {
      const commit = c.self_update();
      const id = this.req({ k: "rekey" });
      this.pendingCommit = id;
      this.needRekey = false;
      this.raw({ t: "send", id, session: this.session, mls: b64(commit), seen: this.cursor });
    } catch (e) {
      this.on.refused("mls_commit", String(e));
    }
  }

  /** Frames after a Welcome that waits (see `beforeWelcome`), in order; media frames do not wait. */
  private afterWelcome: ServerFrame[] | null = null;

  private handle(f: ServerFrame): void {
    try {
      this.onFrame(f);
    } catch (e) {
      this.on.refused("client", e instanceof Error ? e.message : String(e));
    }
  }

  private onFrame(f: ServerFrame): void {
    const c = this.client;
    if (c === null) return;
    if (isMedia(f)) {
      this.on.media(f);
      return;
    }
    if (this.afterWelcome !== null) {
      this.afterWelcome.push(f);
      return;
    }
    switch (f.t) {
      case "ready": {
        mark("ws_ready");
        this.backoff = 250;
        if (this.inGroup) {
          this.on.reconnected();
          this.subscribe();
          return;
        }
        if (this.host && !this.created) {
          c.create_group(new TextEncoder().encode(this.session), unb64(f.external_sender), Date.now());
          this.created = true;
          this.raw({ t: "create", id: this.req({ k: "create" }), session: this.session });
        } else {
          // Key packages are sent once: a connection lost before the reply gets fresh ones.
          const kps = this.uploaded ? undefined : (this.keyPackages ?? c.key_package_batch(2, true));
          this.keyPackages = null;
          this.join(kps);
        }
        this.on.status("joining");
        return;
      }
      case "ok": {
        const r = this.inflight.get(f.id);
        this.inflight.delete(f.id);
        if (r === undefined) return;
        switch (r.k) {
          case "key_packages":
            mark("kp_stored");
            this.uploaded = true;
            return;
          case "create": {
            this.inGroup = true;
            const info = JSON.parse(c.epoch_info()) as EpochInfo;
            this.newEpoch(info);
            this.custody(info, []);
            this.subscribe();
            return;
          }
          case "subscribe":
            if (f.live === true) {
              this.live = true;
              this.on.status("live");
              // Whatever is still unacknowledged was not stored: the log is complete up to here.
              this.outbox.unshift(...this.unacked.splice(0));
              if (this.needRekey) this.rekey();
              this.flush();
            } else {
              this.cursor = Math.max(this.cursor, f.seq ?? this.cursor);
              this.subscribe();
            }
            return;
          case "chat":
            if (f.seq !== undefined) {
              const i = this.unacked.findIndex((u) => same(u, r.m));
              if (i >= 0) this.unacked.splice(i, 1);
              this.own.set(f.seq, r.m);
            }
            return;
          case "commit":
          case "rekey": {
            this.pendingCommit = null;
            const info = JSON.parse(c.confirm_commit(Date.now())) as EpochInfo;
            if (f.seq !== undefined) this.cursor = Math.max(this.cursor, f.seq + 1);
            const leaves = this.newEpoch(info);
            this.custody(info, leaves);
            this.flush();
            return;
          }
          default:
            return;
        }
      }
      case "error": {
        const r = f.id !== undefined ? this.inflight.get(f.id) : undefined;
        if (f.id !== undefined) this.inflight.delete(f.id);
        if (r?.k === "key_packages") this.kpRefused = true;
        if (r?.k === "commit" || r?.k === "rekey") {
          if (r.k === "rekey") this.needRekey = true; // another commit won: try again at the next chance
          this.pendingCommit = null;
          try {
            c.discard_commit();
          } catch {
            /* nothing pending */
          }
          this.flush();
          if (f.code !== "commit_conflict") this.on.refused(f.code, f.message);
          else if (this.needRekey) setTimeout(() => this.rekey(), 200);
        } else if (r?.k === "create" && f.code === "group_exists") {
          // Another device (or a closed tab) of this teacher made the group: join it as a member.
          c.free();
          this.client = new Client(this.user, this.device);
          this.created = true;
          this.join(this.client.key_package_batch(2, true));
        } else if (r?.k === "subscribe" && f.code === "not_a_member") {
          // A restored state whose device left the group meanwhile: start afresh.
          this.forget();
          this.stopped = true;
          this.ws?.close(1000, "not a member");
          this.on.status("refused", "This tab's place in the session's group is gone. Reload the page to join again.");
        } else if (r?.k === "join" && (f.code === "already_joining" || f.code === "already_member")) {
          /* a Welcome is on its way */
        } else if (r?.k === "join" && f.code === "no_key_package" && this.kpRefused) {
          /* the key packages' own refusal was shown */
        } else if (r?.k === "chat") {
          const i = this.unacked.findIndex((u) => same(u, r.m));
          if (i >= 0) this.unacked.splice(i, 1);
          if (f.code === "rate_limited") {
            this.outbox.unshift(r.m);
            setTimeout(() => this.flush(), 100);
          } else this.on.refused(f.code, f.message);
        } else {
          this.on.refused(f.code, f.message);
        }
        return;
      }
      case "welcome": {
        if (this.inGroup) return;
        mark("welcome_in");
        this.afterWelcome = [];
        void this.on.beforeWelcome().then(() => {
          const waiting = this.afterWelcome ?? [];
          this.afterWelcome = null;
          try {
            c.join(unb64(f.mls), Date.now());
            mark("welcome_done");
            this.inGroup = true;
            this.cursor = f.seq + 1;
            this.newEpoch(JSON.parse(c.epoch_info()) as EpochInfo);
            this.subscribe();
          } catch (e) {
            this.on.refused("mls_join", e instanceof Error ? e.message : String(e));
          }
          for (const g of waiting) this.handle(g);
        });
        return;
      }
      case "entry": {
        if (f.seq < this.cursor || !this.inGroup) return;
        this.cursor = f.seq + 1;
        const mine = f.sender?.user === this.user && f.sender.device === this.device;
        const ownCommit = mine && f.kind === "commit" && this.pendingCommit !== null;
        const epoch = Number(c.epoch());
        if (f.kind === "application" && mine) {
          const m = this.own.get(f.seq) ?? this.unacked.shift();
          this.own.delete(f.seq);
          if (m !== undefined) this.on.said(f.seq, this.user, this.device, m);
          return;
        }
        if (f.kind === "commit" && mine && f.epoch < epoch) return;
        if (f.kind === "commit" && !mine && this.pendingCommit !== null && f.epoch === epoch) {
          try {
            c.discard_commit();
          } catch {
            /* nothing pending */
          }
          this.pendingCommit = null;
        }
        let ev: { kind: string; info?: EpochInfo; sender_user?: string; message?: AppMessage };
        try {
          ev = JSON.parse(c.process(unb64(f.mls), Date.now())) as typeof ev;
        } catch (e) {
          this.on.refused("mls_process", `entry ${f.seq}: ${String(e)}`);
          return;
        }
        this.save();
        if (ev.kind === "message" && ev.message !== undefined && ev.sender_user !== undefined) {
          this.on.said(f.seq, ev.sender_user, f.sender?.device ?? "", ev.message);
        } else if (ev.kind === "new_epoch" && ev.info !== undefined) {
          if (this.pendingCommit !== null) {
            this.inflight.delete(this.pendingCommit);
            this.pendingCommit = null;
          }
          const leaves = this.newEpoch(ev.info);
          if (ownCommit) this.custody(ev.info, leaves);
          this.flush();
        } else if (ev.kind === "removed") {
          this.forget();
          this.stopped = true;
          this.inGroup = false;
          this.ws?.close(1000, "removed");
          this.on.status("removed");
        }
        return;
      }
      case "commit_now": {
        if (
          this.pendingCommit !== null ||
          !this.inGroup ||
          Number(c.epoch()) !== f.epoch ||
          !c.is_committer() ||
          c.pending_proposals() === 0
        )
          return;
        const commit = c.commit_pending();
        const welcome = c.take_welcome();
        const id = this.req({ k: "commit" });
        this.pendingCommit = id;
        const frame: ClientFrame = { t: "send", id, session: this.session, mls: b64(commit), seen: this.cursor };
        if (welcome !== undefined) frame.welcome = b64(welcome);
        this.raw(frame);
        return;
      }
      case "closing":
        this.ws?.close(1000, f.code);
        return;
      default:
        return;
    }
  }
}
