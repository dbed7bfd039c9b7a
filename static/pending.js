// pending.js — the user's messages that are not confirmed yet, and what becomes of each.
// A message gets its event id (a UUIDv7) when the user presses send and keeps it for every
// retry, so the gateway never posts it twice, however often the page sends it again. The
// outbox is kept in localStorage per room, so a reload does not lose a message that was
// never confirmed: it shows as pending again and is sent again, with its id, once the room
// is joined. No DOM: the page renders what the outbox says.
//
// States of one message:
//
//   queued ──transmit──▶ sent ──ack / own event──▶ (confirmed: removed)
//     ▲                   │ │
//     └─ connection lost ─┘ ├─ unavailable, unconfirmed, other errors ──▶ failed ──retry──▶ queued
//     └─ not_joined (rejoin)┘└─ conflict, expired id ──▶ refused (on screen until discarded)
//
// `failed` after `unavailable` (not published) or `unconfirmed` (outcome unknown) is safe
// to retry: same id, so at most one event. `refused` means the id belongs to another
// message; nothing the page can do makes this one postable under it.

import { uuidv7 } from './uuid.js';

export const QUEUED = 'queued';
export const SENT = 'sent';
export const FAILED = 'failed';
export const REFUSED = 'refused';

/** A `not_joined` answer is met by rejoining and sending again, this many times. */
export const MAX_REJOINS = 2;

/**
 * The gateway accepts a client-made id only while its time is within 5 minutes of its own
 * clock. Past this age an `invalid_field` answer means the id has expired: the message can
 * no longer be sent under it, and a new id could post it twice if the first try got through.
 */
export const ID_MAX_AGE_MS = 4 * 60 * 1000;

/** localStorage key of a room's outbox. */
export function storageKey(room) {
  return `chat.pending.${room}`;
}

/**
 * What an error answer to a `say` means for the message:
 *   'rejoin'  the gateway forgot the room (it restarted): join again, then resend
 *   'failed'  not posted, or not known to be; a retry with the same id is safe
 *   'refused' the id is taken by a different message; retrying cannot help
 */
export function classifyError(code, rejoins = 0, ageMs = 0) {
  if (code === 'not_joined' && rejoins < MAX_REJOINS) return 'rejoin';
  if (code === 'conflict') return 'refused';
  if (code === 'invalid_field' && ageMs > ID_MAX_AGE_MS) return 'refused';
  return 'failed';
}

/** The sentence shown under a message that failed or was refused, by error code. */
export function explain(code, serverMessage) {
  switch (code) {
    case 'unavailable':
      return 'Not sent: the chat server could not pass it on right now.';
    case 'unconfirmed':
      return 'Not confirmed: the chat server got no confirmation in time; it may have been posted.';
    case 'conflict':
      return 'Refused: this message’s id is already used by a different message.';
    case 'expired':
      return 'Not sent in time: it can no longer be retried safely. If it is missing above, send it again.';
    default:
      return serverMessage || code;
  }
}

/** Whether a Retry of a message that failed with `code` is known to post it at most once. */
export function retryIsSafe(code) {
  return code !== 'conflict' && code !== 'expired';
}

export class Outbox {
  /**
   * @param {object} o
   * @param {string} o.room the room the messages go to (also the storage key)
   * @param {string} o.name the name they are sent under; other names' messages stay stored
   * @param {Storage|null} [o.storage] localStorage, or null to keep nothing
   * @param {() => number} [o.now] clock, ms since the epoch
   * @param {(now: number) => string} [o.makeId] id maker (UUIDv7)
   */
  constructor({ room, name, storage = null, now = Date.now, makeId = uuidv7 }) {
    this.room = room;
    this.name = name;
    this.storage = storage;
    this.now = now;
    this.makeId = makeId;
    /** id -> entry {id, text, name, at, status, ref, code, error, rejoins}; insertion order. */
    this.entries = new Map();
    /** Stored messages of this room under other names: kept as they are. */
    this.others = [];
    this.refSeq = 0;
    this.load();
  }

  /** Every message still shown, oldest first. */
  list() {
    return [...this.entries.values()];
  }

  get(id) {
    return this.entries.get(id);
  }

  /** The message a `ref` was sent with (every transmission has a fresh ref). */
  byRef(ref) {
    if (typeof ref !== 'string') return undefined;
    return this.list().find((e) => e.ref === ref);
  }

  /** A new message, queued; its id is made now, from the current time. */
  add(text) {
    const at = this.now();
    const e = {
      id: this.makeId(at), text, name: this.name, at, status: QUEUED,
      ref: null, code: null, error: null, rejoins: 0,
    };
    this.entries.set(e.id, e);
    this.save();
    return e;
  }

  /** The `say` frame that sends `e` now (with a fresh ref); `e` becomes `sent`. */
  transmit(e) {
    this.refSeq += 1;
    e.ref = `s-${this.refSeq}`;
    e.status = SENT;
    e.code = null;
    e.error = null;
    return { type: 'say', room: this.room, text: e.text, ref: e.ref, id: e.id };
  }

  /** Messages to send once joined: the queued ones, oldest first. */
  queued() {
    return this.list().filter((e) => e.status === QUEUED);
  }

  /** The socket closed: what was on the wire unanswered goes out again after the rejoin. */
  connectionLost() {
    for (const e of this.entries.values()) {
      if (e.status === SENT) e.status = QUEUED;
    }
  }

  /**
   * The server confirmed event `id` (an `ack`, or the event itself live or in history).
   * Returns the message it confirms, now removed, or undefined when it was none of ours.
   */
  confirmed(id) {
    const e = this.entries.get(id);
    if (!e) return undefined;
    this.entries.delete(id);
    this.save();
    return e;
  }

  /**
   * An error answer to the `say` sent with `ref`. Returns {entry, outcome} (outcome as in
   * `classifyError`), or undefined when the ref is not one of ours.
   */
  errored(ref, code, message) {
    const e = this.byRef(ref);
    if (!e || e.status !== SENT) return undefined;
    const outcome = classifyError(code, e.rejoins, this.now() - e.at);
    if (outcome === 'rejoin') {
      e.rejoins += 1;
      e.status = QUEUED;
    } else {
      e.status = outcome === 'refused' ? REFUSED : FAILED;
      e.code = code === 'invalid_field' && outcome === 'refused' ? 'expired' : code;
      e.error = explain(e.code, message);
    }
    this.save();
    return { entry: e, outcome };
  }

  /** The user asked to send a failed message again: queued, same id. */
  retry(id) {
    const e = this.entries.get(id);
    if (!e || e.status !== FAILED) return undefined;
    e.status = QUEUED;
    e.rejoins = 0;
    e.code = null;
    e.error = null;
    this.save();
    return e;
  }

  /** The user gave up on a failed or refused message. */
  discard(id) {
    const e = this.entries.get(id);
    if (!e) return undefined;
    this.entries.delete(id);
    this.save();
    return e;
  }

  // ------------------------------------------------------------------ storage

  /**
   * Restores the room's stored messages: those under our name come back (failed ones as
   * failed, the rest queued to be sent again); the others are kept for their own name.
   */
  load() {
    for (const s of readStored(this.storage, this.room)) {
      if (s.name !== this.name) {
        this.others.push(s);
        continue;
      }
      if (this.entries.has(s.id)) continue;
      const failed = typeof s.code === 'string';
      this.entries.set(s.id, {
        id: s.id, text: s.text, name: s.name, at: s.at,
        status: failed ? FAILED : QUEUED, ref: null,
        code: failed ? s.code : null, error: failed ? explain(s.code, s.error) : null,
        rejoins: 0,
      });
    }
  }

  /** Writes the outbox; refused messages are not kept (they can never be posted). */
  save() {
    if (!this.storage) return;
    const mine = this.list().filter((e) => e.status !== REFUSED).map((e) => {
      const s = { id: e.id, text: e.text, name: e.name, at: e.at };
      if (e.status === FAILED) {
        s.code = e.code;
        s.error = e.error;
      }
      return s;
    });
    const all = this.others.concat(mine);
    try {
      if (all.length) this.storage.setItem(storageKey(this.room), JSON.stringify(all));
      else this.storage.removeItem(storageKey(this.room));
    } catch { /* storage full or disabled: the page still works, without the reload guarantee */ }
  }
}

/** The stored messages of `room`, whatever survived in storage that still looks like one. */
function readStored(storage, room) {
  if (!storage) return [];
  let data;
  try {
    data = JSON.parse(storage.getItem(storageKey(room)) || '[]');
  } catch {
    return [];
  }
  if (!Array.isArray(data)) return [];
  return data.filter((s) => s && typeof s === 'object'
    && typeof s.id === 'string' && typeof s.text === 'string'
    && typeof s.name === 'string' && Number.isFinite(s.at));
}
