// normalize.js — the page's copy of chat-core's rules for what users type
// (chat-core/src/normalize.rs): room names, user names and message text. The gateway
// applies the same rules and is the authority; the page uses them to say what is wrong
// before sending and to predict the text the server will store. No DOM.

/** Rooms are plain ASCII so they are safe in queue names, URLs and file names alike. */
export const ROOM_RE = /^[A-Za-z0-9_-]{1,64}$/;

/** Limits the gateway enforces; `hello.limits` replaces these defaults (the server's). */
export const DEFAULT_LIMITS = Object.freeze({ max_text: 4000, max_name: 32, max_frame: 16384 });

// Characters refused in names and dropped from text: controls (Unicode Cc, what Rust's
// char::is_control tests), line/paragraph separators and bidi controls.
const FORBIDDEN = '\\p{Cc}\\u2028\\u2029\\u200E\\u200F\\u061C\\u202A-\\u202E\\u2066-\\u2069';
const FORBIDDEN_RE = new RegExp(`[${FORBIDDEN}]`, 'u');
// Everything forbidden except LF, which text keeps.
const DROPPED_FROM_TEXT_RE = new RegExp(`(?!\\n)[${FORBIDDEN}]`, 'gu');

// Rust's str::trim strips Unicode White_Space, which is not JavaScript's String#trim: Rust
// also strips U+0085 and keeps U+FEFF. The page must agree with the server on names like
// "\uFEFFbob", so it trims the Rust way.
const WS = '\\u0009-\\u000D\\u0020\\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000';
const TRIM_RE = new RegExp(`^[${WS}]+|[${WS}]+$`, 'gu');

/** `s` trimmed as Rust's `str::trim` does (Unicode White_Space at both ends). */
export function rustTrim(s) {
  return s.replace(TRIM_RE, '');
}

/** Length in Unicode scalar values, as Rust's `chars().count()`. */
export function charCount(s) {
  let n = 0;
  for (let i = 0; i < s.length; i += 1) {
    const c = s.charCodeAt(i);
    // A high surrogate followed by a low one is one character; lone surrogates count
    // one each (they cannot reach the server as UTF-8 anyway).
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) i += 1;
    }
    n += 1;
  }
  return n;
}

/** Whether `s` contains a character that names may not have. */
export function hasForbidden(s) {
  return FORBIDDEN_RE.test(s);
}

/** chat-core's `room`: the room as given, or null. Rooms are never rewritten. */
export function normalizeRoom(raw) {
  return ROOM_RE.test(raw) ? raw : null;
}

/** chat-core's `name`: NFC, trimmed, 1..maxName characters, nothing forbidden; or null. */
export function normalizeName(raw, maxName = DEFAULT_LIMITS.max_name) {
  const v = rustTrim(raw.normalize('NFC'));
  if (!v || charCount(v) > maxName || hasForbidden(v)) return null;
  return v;
}

/**
 * chat-core's text rewriting: NFC, CRLF and CR become LF, TAB becomes a space, every other
 * forbidden character is dropped. Whether the result is acceptable is `textProblem`'s job.
 */
export function normalizeText(raw) {
  return raw
    .normalize('NFC')
    .replace(/\r\n?/g, '\n')
    .replace(/\t/g, ' ')
    .replace(DROPPED_FROM_TEXT_RE, '');
}

/**
 * What the server would say about `raw` as message text: null when it is accepted,
 * 'empty' when nothing but white space is left, or a sentence when it is too long.
 */
export function textProblem(raw, maxText = DEFAULT_LIMITS.max_text) {
  const norm = normalizeText(raw);
  if (!rustTrim(norm)) return 'empty';
  const n = charCount(norm);
  if (n > maxText) return `Too long: ${n} / ${maxText} characters.`;
  return null;
}

/** Text as the page sends it: leading blank lines and trailing white space removed. */
export function outgoingText(raw) {
  return raw.replace(/^(?:[ \t]*\r?\n)+/, '').replace(/\s+$/, '');
}

/** The join form's name field: [value, null] or [null, a sentence for the user]. */
export function checkName(raw, maxName = DEFAULT_LIMITS.max_name) {
  const v = normalizeName(raw, maxName);
  if (v === null) {
    return [null, `Name must be 1 to ${maxName} characters, without control characters.`];
  }
  return [v, null];
}

/** The join form's room field (surrounding spaces forgiven): [value, null] or [null, why]. */
export function checkRoom(raw) {
  const v = normalizeRoom(raw.trim());
  if (v === null) {
    return [null, 'Room must be 1 to 64 characters of A–Z, a–z, 0–9, “_” or “-”.'];
  }
  return [v, null];
}
