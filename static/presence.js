// Who is online and who is typing in the room, as pure state the page renders: the member
// list folded from `presence` and `presence_diff` frames, the typers from `typing` frames
// (each expiring on its own after `ttl_ms`, so a lost stop never sticks), and when the
// page should tell the server that its user is typing. No DOM here: static/test covers it.

/** The room's members by user id, or only a count in a big room. */
export class Members {
  constructor() {
    /** @type {Map<string, {name: string, connections: number}>} */
    this.byUser = new Map();
    /** @type {number|null} */
    this.count = null;
  }

  /** Applies a `presence` or `presence_diff` frame; false if it is neither. */
  apply(frame) {
    const member = (m) => m && typeof m.user === 'string' && typeof m.name === 'string';
    if (frame.type === 'presence') {
      this.byUser.clear();
      this.count = Number.isInteger(frame.count) ? frame.count : null;
      for (const m of Array.isArray(frame.members) ? frame.members : []) {
        if (member(m)) this.byUser.set(m.user, { name: m.name, connections: m.connections | 0 });
      }
      return true;
    }
    if (frame.type === 'presence_diff') {
      // Upserts and removals: applying a diff twice changes nothing.
      for (const m of Array.isArray(frame.joins) ? frame.joins : []) {
        if (member(m)) this.byUser.set(m.user, { name: m.name, connections: m.connections | 0 });
      }
      for (const user of Array.isArray(frame.leaves) ? frame.leaves : []) this.byUser.delete(user);
      return true;
    }
    return false;
  }

  /** How many are online. */
  get online() {
    return this.count ?? this.byUser.size;
  }

  /** The members sorted by shown name, for the list. */
  sorted() {
    return [...this.byUser.entries()]
      .map(([user, m]) => ({ user, ...m }))
      .sort((a, b) => a.name.localeCompare(b.name) || a.user.localeCompare(b.user));
  }
}

/** Who is typing, each until their time to live ends. */
export class Typers {
  constructor() {
    /** @type {Map<string, {name: string, until: number}>} */
    this.byUser = new Map();
  }

  /** Takes a `typing` frame at time `now` (ms): its list replaces the current one. */
  apply(frame, now) {
    const users = Array.isArray(frame.users) ? frame.users : [];
    const names = Array.isArray(frame.names) ? frame.names : [];
    const ttl = Number.isFinite(frame.ttl_ms) && frame.ttl_ms > 0 ? frame.ttl_ms : 6000;
    this.byUser.clear();
    users.forEach((user, i) => {
      if (typeof user !== 'string') return;
      const name = typeof names[i] === 'string' ? names[i] : user;
      this.byUser.set(user, { name, until: now + ttl });
    });
  }

  /** The names typing at `now`, leaving out `self` (the page's own user). */
  names(now, self) {
    const out = [];
    for (const [user, t] of this.byUser) {
      if (t.until > now && user !== self) out.push(t.name);
    }
    return out.sort((a, b) => a.localeCompare(b));
  }
}

/** "alice is typing…", "alice and bob are typing…", "4 people are typing…", or "". */
export function typingLine(names) {
  if (names.length === 0) return '';
  if (names.length === 1) return `${names[0]} is typing…`;
  if (names.length === 2) return `${names[0]} and ${names[1]} are typing…`;
  if (names.length === 3) return `${names[0]}, ${names[1]} and ${names[2]} are typing…`;
  return `${names.length} people are typing…`;
}

/** How often a start is sent again while the user keeps typing (the server relays at
 *  most one per second; others expire theirs after ttl_ms, 6 s by default). */
export const TYPING_RESEND_MS = 3000;

/**
 * Decides what to tell the server as the composer changes: `start` when typing begins
 * or every TYPING_RESEND_MS while it goes on, `stop` when the text is emptied or sent.
 */
export class TypingSignal {
  constructor() {
    this.lastStart = null;
  }

  /** The composer's text changed at `now`: 'start', 'stop' or null (nothing to send). */
  input(text, now) {
    if (text.trim() === '') return this.stop();
    if (this.lastStart === null || now - this.lastStart >= TYPING_RESEND_MS) {
      this.lastStart = now;
      return 'start';
    }
    return null;
  }

  /** The message was sent or the text cleared: 'stop' if a start was sent. */
  stop() {
    if (this.lastStart === null) return null;
    this.lastStart = null;
    return 'stop';
  }
}
