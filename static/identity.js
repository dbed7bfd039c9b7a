// identity.js — who the page speaks as: the token it presents in token mode (taken from
// the URL fragment, which is then removed from the address bar, or pasted), what the
// token says about itself for display and refresh timing, and how a speaker is shown
// (a verified user's name, a guest marked as such). Pure functions, no DOM: the node tests
// in static/test/identity.test.js cover them. The page never checks a token: the gateway
// does, and its `authenticated` answer is what the page believes.

/** Session storage key of the current token (gone when the tab closes). */
export const STORE_TOKEN = 'chat.token';

/** How long before `expires_at` the page asks for a fresh token, in milliseconds. */
export const REFRESH_BEFORE_MS = 60_000;

/**
 * The token in a URL fragment like `#token=<jwt>` (other fragment parameters are kept), and
 * the fragment without it, for `history.replaceState`. `token` is null when there is none.
 */
export function takeFragmentToken(hash) {
  const raw = typeof hash === 'string' ? hash.replace(/^#/, '') : '';
  const params = new URLSearchParams(raw);
  const token = params.get('token');
  params.delete('token');
  const rest = params.toString();
  return { token: token && looksLikeJwt(token) ? token : null, rest: rest ? `#${rest}` : '' };
}

/** Whether a string has the shape of a compact JWT (three base64url parts). */
export function looksLikeJwt(s) {
  return typeof s === 'string' && /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/.test(s.trim());
}

/** The claims of a token, unverified (for display only); null if it does not parse. */
export function unverifiedClaims(token) {
  if (!looksLikeJwt(token)) return null;
  try {
    const part = token.trim().split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const padded = part + '='.repeat((4 - (part.length % 4)) % 4);
    const json = new TextDecoder().decode(Uint8Array.from(atob(padded), (c) => c.charCodeAt(0)));
    const claims = JSON.parse(json);
    return claims && typeof claims === 'object' ? claims : null;
  } catch {
    return null;
  }
}

/** Milliseconds from `nowMs` until the page should ask for a fresh token (0: now). */
export function refreshDelay(expiresAt, nowMs, before = REFRESH_BEFORE_MS) {
  const at = Date.parse(expiresAt);
  if (!Number.isFinite(at)) return 0;
  return Math.max(0, at - before - nowMs);
}

/** The name to show for an event's speaker: the verified display name, else `user`. */
export function speakerName(ev) {
  return typeof ev?.name === 'string' && ev.name ? ev.name : String(ev?.user ?? '');
}

/** Whether nobody vouched for the speaker (open mode, or a version 1 event). */
export function isGuest(ev) {
  return ev?.guest === true || ev?.v === 1;
}

/** The author label of an event: `Alice`, or `alice (guest)`. */
export function authorLabel(ev) {
  const name = speakerName(ev);
  return isGuest(ev) ? `${name} (guest)` : name;
}

/** Whether an event was made by the page's own speaker. */
export function isOwn(ev, self) {
  if (!self) return false;
  if (self.verified) return !isGuest(ev) && ev.user === self.user;
  return isGuest(ev) && ev.user === self.user;
}

/** The line shown for a membership or presence event; null for other types. */
export function systemLine(ev) {
  const who = authorLabel(ev);
  switch (ev?.type) {
    case 'join': return `${who} joined`;
    case 'leave': return `${who} left`;
    case 'room_created':
      return `${who} created the room (${ev.visibility === 'private' ? 'private' : 'public'})`;
    case 'member_added': return `${who} added ${ev.member}`;
    case 'member_removed': return `${who} removed ${ev.member}`;
    default: return null;
  }
}

/** What a close code means for the login step, or null when it is not about the token. */
export function tokenProblem(code) {
  if (code === 4001) return 'The token was refused. Paste a valid one.';
  if (code === 4002) return 'Your token expired. Paste a fresh one to carry on.';
  return null;
}
