// The live-session WebSocket's frames (crates/cloister-wire/src/live.rs), as TypeScript types.

export interface MediaSource {
  mid: string;
  source: string;
}

export interface MediaTrack {
  mid: string;
  device: string;
  source: string;
}

export interface LeafReport {
  user: string;
  device: string;
  leaf: number;
}

export type ClientFrame =
  | { t: "key_packages"; id: number; key_packages: string[] }
  | { t: "create"; id: number; session: string }
  | { t: "join"; id: number; session: string }
  | { t: "subscribe"; id: number; session: string; from: number }
  | { t: "send"; id: number; session: string; mls: string; welcome?: string; seen?: number }
  | {
      t: "custody";
      id: number;
      session: string;
      epoch: number;
      roster_commitment: string;
      committer_leaf: number;
      leaves: LeafReport[];
    }
  | { t: "leave"; id: number; session: string }
  | { t: "remove"; id: number; session: string; user: string }
  | { t: "media_publish"; id: number; session: string; sdp: string; sources: MediaSource[] }
  | { t: "media_republish"; id: number; peer: number; sdp: string; sources: MediaSource[] }
  | { t: "media_subscribe"; id: number; session: string }
  | { t: "media_answer"; id: number; peer: number; sdp: string }
  | { t: "media_prefs"; id: number; peer: number; max_layer: number; video: boolean }
  | { t: "media_close"; id: number; peer: number }
  | { t: "stage"; id: number; session: string; user: string; on: boolean };

export type EntryKind = "proposal" | "commit" | "application";

export type ServerFrame =
  | { t: "ready"; user: string; device: string; external_sender: string }
  | { t: "ok"; id: number; seq?: number; epoch?: number; held?: number; live?: boolean }
  | { t: "error"; id?: number; code: string; message: string }
  | {
      t: "entry";
      session: string;
      seq: number;
      epoch: number;
      kind: EntryKind;
      sender?: { user: string; device: string };
      mls: string;
    }
  | { t: "welcome"; session: string; seq: number; mls: string }
  | { t: "commit_now"; session: string; epoch: number }
  | { t: "closing"; code: string }
  | { t: "media_answer"; id: number; peer: number; sdp: string }
  | { t: "media_opened"; id: number; peer: number }
  | { t: "media_offer"; peer: number; sdp: string; tracks: MediaTrack[] }
  | { t: "media_closed"; peer: number; code: string }
  | { t: "media_layer"; peer: number; mid: string; layer: number }
  | { t: "speaker"; session: string; device?: string }
  | { t: "staged"; session: string; user: string; on: boolean };

export interface RosterEntry {
  leaf: number;
  user_id: string;
  device_id: string;
  fingerprint: string;
}

export interface EpochInfo {
  epoch: number;
  roster: RosterEntry[];
  safety_code: string;
  custody: { epoch: number; roster_commitment: string; committer_leaf: number };
}

export type AppMessage =
  | { type: "chat"; text: string }
  | { type: "question"; id: string; text: string }
  | { type: "answer"; question_id: string; text: string }
  | { type: "upvote"; question_id: string }
  | { type: "profile"; display_name: string }
  | { type: "raise_hand"; raised: boolean }
  | { type: "reaction"; target: string; emoji: string }
  | { type: "poll"; id: string; question: string; options: string[] }
  | { type: "vote"; poll_id: string; option: number }
  | { type: "code_edit"; doc: string; base_rev: number; offset: number; delete: number; insert: string };

export function b64(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

export function unb64(s: string): Uint8Array {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/** A client frame before its request id is given. */
export type Unsent = ClientFrame extends infer F ? (F extends { id: number } ? Omit<F, "id"> : never) : never;
