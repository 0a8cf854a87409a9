// Where a live room keeps what must survive a reload or a closed tab: the MLS group state of this browser's device
// in the session, and what the page showed (names, chat, questions, hands; messages of past epochs cannot be
// decrypted again). One tab per person and session owns it, through a Web Lock: that tab uses localStorage, so
// closing it and opening the session again brings the same device back. Another tab of the same person meanwhile
// (after waiting 1.5 s for the lock), or a browser without Web Locks, uses its own sessionStorage and joins as a
// device of its own. Entries of
// sessions not opened for a day are deleted.

/** The storage a room uses, and the lock that makes it this tab's. */
export interface RoomStore {
  storage: Storage;
  /** Gives the lock back (the page going away gives it back too). */
  release(): void;
}

const PREFIXES = ["cloister.room.", "cloister.ui."];
const MAX_AGE_MS = 24 * 3600 * 1000;
const WAIT_MS = 1500;
/** Pruning reads every entry whole (the group states are tens of kB): it waits until the room is up. */
const PRUNE_AFTER_MS = 10_000;

/** Stamps a value with the time it was saved, for pruning. */
export function stamped<T extends object>(v: T): string {
  return JSON.stringify({ ...v, saved_at: Date.now() });
}

/** Deletes the entries of rooms not saved for a day, except `keep`'s (the room open in this tab). */
function prune(keep: string): void {
  const old = Date.now() - MAX_AGE_MS;
  for (let i = localStorage.length - 1; i >= 0; i--) {
    const k = localStorage.key(i);
    if (k === null || !PREFIXES.some((p) => k.startsWith(p)) || k.endsWith(keep)) continue;
    try {
      const v = JSON.parse(localStorage.getItem(k) ?? "null") as { saved_at?: number } | null;
      if ((v?.saved_at ?? 0) < old) localStorage.removeItem(k);
    } catch {
      localStorage.removeItem(k);
    }
  }
}

export async function openRoomStore(session: string, user: string): Promise<RoomStore> {
  const own: RoomStore = { storage: sessionStorage, release: () => {} };
  try {
    void localStorage.length; // reading it throws where storage is disabled
  } catch {
    return own; // no localStorage
  }
  setTimeout(() => {
    try {
      prune(`.${session}.${user}`);
    } catch {
      /* storage gone meanwhile */
    }
  }, PRUNE_AFTER_MS);
  const locks = (navigator as { locks?: LockManager }).locks;
  if (locks === undefined) return own;
  // A free lock is granted at once. A held one is waited for briefly: a reloaded page may run before the browser
  // has taken the lock back from the page it replaced.
  return new Promise((resolve) => {
    locks
      .request(`cloister.room.${session}.${user}`, { signal: AbortSignal.timeout(WAIT_MS) }, () => {
        // Held until released (or the page goes away).
        return new Promise<void>((release) => resolve({ storage: localStorage, release }));
      })
      .catch(() => resolve(own));
  });
}
