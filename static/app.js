// app.js — the entry point of the chat page (static/index.html): the sign-in step in token
// mode, the join form, the room (join and rejoin with `since`, history then live events),
// the composer, private rooms (create, add members), and the wiring between the connection
// (connection.js), the identity (identity.js), the outbox of unconfirmed messages
// (pending.js) and the DOM (render.js). No framework and no build step: native ES modules.

import { Connection } from './connection.js';
import {
  DEFAULT_LIMITS, charCount, checkName, checkRoom, normalizeText, outgoingText, textProblem,
} from './normalize.js';
import {
  STORE_TOKEN, authorLabel, isOwn, looksLikeJwt, refreshDelay, systemLine, takeFragmentToken,
  tokenProblem,
} from './identity.js';
import { ACTIONS, MessageStates, reactFrame } from './messages.js';
import { FAILED, Outbox, QUEUED, REFUSED, retryIsSafe } from './pending.js';
import { Members, Typers, TypingSignal, typingLine } from './presence.js';
import {
  MessageList, adoptEvent, buildMessage, buildSystem, closeEditor, confirmDelete, openEditor,
  parseTime, showBanner, showConfirmed, showFailed, showMessageState, showPending,
} from './render.js';

const STORE_NAME = 'chat.name';
const STORE_ROOM = 'chat.room';

const $ = (id) => document.getElementById(id);
const el = {
  roomTitle: $('room-title'),
  whoami: $('whoami'),
  gateway: $('gateway'),
  status: $('status'),
  leave: $('leave'),
  banner: $('banner'),
  joinView: $('join-view'),
  joinForm: $('join-form'),
  name: $('name'),
  room: $('room'),
  joinError: $('join-error'),
  joinButton: $('join-button'),
  chatView: $('chat-view'),
  text: $('text'),
  counter: $('counter'),
  send: $('send'),
  lock: $('lock'),
  loginView: $('login-view'),
  loginForm: $('login-form'),
  loginSub: $('login-sub'),
  loginError: $('login-error'),
  tokenInput: $('token-input'),
  nameField: $('name-field'),
  privateField: $('private-field'),
  private: $('private'),
  memberForm: $('member-form'),
  member: $('member'),
  membersSummary: $('members-summary'),
  membersList: $('members-list'),
  typing: $('typing'),
};

/** Who is online and typing in the room, and what the page tells about its own typing. */
const presence = {
  members: new Members(),
  typers: new Typers(),
  signal: new TypingSignal(),
  timer: 0,
};

/**
 * Who the page speaks as. `mode` comes from `hello` (`open` or `token`); in token mode
 * `token` is what the page presents and `self` what the gateway's `authenticated` said.
 */
const auth = {
  mode: null,
  token: null,
  /** @type {{user: string, name: string, verified: boolean, expiresAt?: string}|null} */
  self: null,
  refreshTimer: 0,
};

/** Answers awaited by `ref` (create_room, add_member): ref -> callback(frame). */
const awaiting = new Map();

/** Limits announced by the gateway in `hello`. */
const limits = { ...DEFAULT_LIMITS };

// A token handed over in the URL fragment (`#token=…`) is taken and removed from the
// address bar at once, so it is not left in the history or shared by a copied link.
{
  const { token, rest } = takeFragmentToken(location.hash);
  if (token) {
    sessionSet(STORE_TOKEN, token);
    history.replaceState(null, '', `${location.pathname}${location.search}${rest}`);
  }
  auth.token = token || sessionGet(STORE_TOKEN);
}

const params = new URLSearchParams(location.search);
const conn = new Connection(gatewayUrls(), {
  // For tests: ?ping_ms=&dead_ms= shorten the heartbeat (see connection.js).
  pingAfterMs: Number(params.get('ping_ms')),
  deadAfterMs: Number(params.get('dead_ms')),
});
const list = new MessageList($('messages'), $('jump'));
/** What edits, deletions and reactions made of the messages shown. */
const states = new MessageStates();
/** Numbers each `joined` history, whose own actions are already in its projection. */
let historyBatch = 0;

/** The room the page is in (or joining); null on the join form. */
const room = {
  name: null, // normalised name we joined with
  id: null, // room name
  joined: false, // the server confirmed the join on the current socket
  joinRef: null,
  resetOnJoined: false, // the next `joined` replaces the list instead of appending
  joinRetryTimer: 0,
  lastId: null, // id of the last event seen in the room (sent as `since`)
  /** @type {Outbox|null} the user's unconfirmed messages */
  outbox: null,
  /** message id -> the element showing it while it is unconfirmed */
  nodes: new Map(),
};
let refSeq = 0;
let unread = 0; // new events while the tab is hidden (shown in the title)
let countdown = 0;

function nextRef(prefix) {
  refSeq += 1;
  return `${prefix}-${refSeq}`;
}

/** Gateway websocket URLs: `?gw=a,b,c` or ws(s)://<this host>/ws. */
function gatewayUrls() {
  const param = new URLSearchParams(location.search).get('gw');
  if (param) {
    const urls = param.split(',').map((s) => s.trim()).filter(Boolean);
    if (urls.length) return urls;
  }
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return [`${proto}//${location.host}/ws`];
}

function storage() {
  try { return window.localStorage; } catch { return null; }
}

function sessionGet(key) {
  try { return sessionStorage.getItem(key); } catch { return null; }
}

function sessionSet(key, value) {
  try {
    if (value === null) sessionStorage.removeItem(key);
    else sessionStorage.setItem(key, value);
  } catch { /* private mode: the token lives in memory only */ }
}

function storeGet(key) {
  try { return localStorage.getItem(key); } catch { return null; }
}

function storeSet(key, value) {
  try { localStorage.setItem(key, value); } catch { /* private mode: ignore */ }
}

// ---------------------------------------------------------------- connection

function setStatus(state, text) {
  el.status.dataset.state = state;
  el.status.textContent = text;
  el.status.title = conn.url || '';
}

conn.addEventListener('status', ({ detail }) => {
  clearInterval(countdown);
  countdown = 0;
  if (detail.state === 'connecting') setStatus('connecting', 'connecting…');
  else if (detail.state === 'connected') setStatus('connected', 'connected');
  else if (detail.state === 'reconnecting') {
    const tick = () => {
      const secs = Math.max(1, Math.ceil((detail.retryAt - Date.now()) / 1000));
      setStatus('reconnecting', `reconnecting in ${secs}s`);
    };
    tick();
    countdown = setInterval(tick, 250);
  }
});

conn.addEventListener('close', ({ detail }) => {
  room.joined = false;
  if (auth.mode === 'token') auth.self = null;
  const problem = tokenProblem(detail?.code);
  if (problem) {
    // The token is no good any more: ask for another without leaving the room.
    auth.token = null;
    sessionSet(STORE_TOKEN, null);
    showLogin(problem);
  }
  clearTimeout(room.joinRetryTimer);
  el.gateway.textContent = '—';
  el.gateway.title = '';
  // Unanswered messages go out again, with their ids, after the rejoin.
  room.outbox?.connectionLost();
});

conn.addEventListener('frame', ({ detail: { frame } }) => {
  switch (frame.type) {
    case 'hello': onHello(frame); break;
    case 'authenticated': onAuthenticated(frame); break;
    case 'removed': onRemoved(frame); break;
    case 'joined': onJoined(frame); break;
    case 'event': onEvent(frame.event, false); break;
    case 'ack': onAck(frame); break;
    case 'error': onError(frame); break;
    case 'presence':
    case 'presence_diff': onPresence(frame); break;
    case 'typing': onTyping(frame); break;
    default: break; // `left` and anything unknown need nothing
  }
});

/** Whether the page may send room requests on this connection (token mode: signed in). */
function canSpeak() {
  return auth.mode === 'open' || (auth.mode === 'token' && !!auth.self);
}

function sendJoin() {
  clearTimeout(room.joinRetryTimer);
  room.joined = false;
  if (!canSpeak()) return; // the `hello` or `authenticated` that follows joins
  room.joinRef = nextRef('j');
  const frame = { type: 'join', room: room.id, ref: room.joinRef };
  if (auth.mode === 'open') frame.name = room.name;
  if (room.lastId) {
    frame.since = room.lastId;
  } else {
    room.resetOnJoined = true; // nothing seen yet: take the history as the whole list
  }
  if (list.isEmpty) list.setPhase('joining');
  conn.send(frame);
}

// ---------------------------------------------------------------- incoming frames

function onHello(msg) {
  const gw = typeof msg.gateway === 'string' && msg.gateway ? msg.gateway : '?';
  el.gateway.textContent = gw;
  el.gateway.title = `${gw} — ${conn.url}`;
  const l = msg.limits;
  if (l && typeof l === 'object') {
    for (const k of ['max_text', 'max_name', 'max_frame']) {
      if (Number.isInteger(l[k]) && l[k] > 0) limits[k] = l[k];
    }
  }
  auth.mode = msg.auth === 'token' ? 'token' : 'open';
  el.nameField.hidden = auth.mode === 'token';
  el.privateField.hidden = auth.mode !== 'token';
  updateComposer();
  if (auth.mode === 'token') {
    if (auth.token) conn.send({ type: 'auth', token: auth.token });
    else showLogin(null);
    return;
  }
  auth.self = null;
  if (room.id) sendJoin();
}

function onAuthenticated(msg) {
  if (typeof msg.user !== 'string' || typeof msg.name !== 'string') return;
  auth.self = { user: msg.user, name: msg.name, verified: true, expiresAt: msg.expires_at };
  hideLogin();
  clearTimeout(auth.refreshTimer);
  // A minute before the token runs out, ask for a fresh one (sent on this connection).
  auth.refreshTimer = setTimeout(() => {
    showLogin('Your token expires soon. Paste a fresh one to stay connected.');
  }, refreshDelay(msg.expires_at, Date.now()));
  if (room.id) {
    room.name = msg.name;
    el.whoami.textContent = `as ${msg.name} (${msg.user})`;
    if (!room.joined) sendJoin();
  } else if (el.joinView.hidden === false) {
    (el.room.value ? el.joinButton : el.room).focus();
  }
}

function onRemoved(msg) {
  if (!room.id || msg.room !== room.id) return;
  const text = typeof msg.message === 'string' ? msg.message : 'removed from the room';
  showJoinView(`#${msg.room}: ${text}`);
}

function onJoined(msg) {
  if (!room.id || msg.room !== room.id) return;
  if (msg.ref !== undefined && msg.ref !== room.joinRef) return; // answer to an older join
  room.joined = true;
  el.lock.hidden = msg.private !== true;
  el.memberForm.hidden = !(msg.private === true && auth.self?.verified);
  const history = Array.isArray(msg.history) ? msg.history.filter(validEvent) : [];

  // Unconfirmed own messages always stay at the bottom: take them out while the history
  // goes in (which may confirm some of them, by id), then put the rest back.
  for (const node of room.nodes.values()) node.remove();
  if (room.resetOnJoined) {
    list.clear();
    states.clear();
  }
  room.resetOnJoined = false;

  historyBatch += 1;
  for (const ev of history) onEvent(ev, true);

  for (const e of room.outbox.list()) {
    list.append(room.nodes.get(e.id), new Date(), room.name, false);
  }
  for (const e of room.outbox.queued()) transmit(e);
  list.setPhase(list.isEmpty ? 'empty' : '');
  list.scrollToBottom();
}

function onPresence(msg) {
  if (!room.id || msg.room !== room.id) return;
  presence.members.apply(msg);
  renderMembers();
}

function renderMembers() {
  const n = presence.members.online;
  el.membersSummary.textContent = `${n} online`;
  const items = presence.members.sorted().map((m) => {
    const li = document.createElement('li');
    li.textContent = m.connections > 1 ? `${m.name} (${m.connections})` : m.name;
    li.title = m.user;
    return li;
  });
  el.membersList.replaceChildren(...items);
}

function onTyping(msg) {
  if (!room.id || msg.room !== room.id) return;
  presence.typers.apply(msg, Date.now());
  renderTyping();
}

/** Shows who is typing, and checks again when the first of them expires. */
function renderTyping() {
  clearTimeout(presence.timer);
  const self = auth.self?.user ?? room.name;
  const now = Date.now();
  el.typing.textContent = typingLine(presence.typers.names(now, self));
  const next = Math.min(...[...presence.typers.byUser.values()].map((t) => t.until));
  if (Number.isFinite(next) && next > now) presence.timer = setTimeout(renderTyping, next - now + 10);
}

/** Tells the room this user is typing (or stopped), as the composer changes. */
function signalTyping(state) {
  if (state && room.id && room.joined) conn.send({ type: 'typing', room: room.id, state });
}

function resetPresence() {
  presence.members = new Members();
  presence.typers = new Typers();
  presence.signal = new TypingSignal();
  renderMembers();
  renderTyping();
}

function validEvent(ev) {
  return !!ev && typeof ev === 'object'
    && typeof ev.id === 'string' && ev.id !== ''
    && typeof ev.type === 'string'
    && typeof ev.room === 'string'
    && typeof ev.user === 'string';
}

/** A history or live event for the current room. */
function onEvent(ev, fromHistory) {
  if (!validEvent(ev) || !room.id || ev.room !== room.id) return;
  if (!fromHistory && !room.joined) return; // stray event from before a (re)join
  room.lastId = ev.id;

  if (ACTIONS.has(ev.type)) {
    // An edit, deletion or reaction: change the message it names, in place.
    const changed = states.apply(ev, fromHistory ? historyBatch : null);
    if (changed) decorate(changed);
    return;
  }

  const known = list.byId.get(ev.id);
  if (known) {
    // Usually the echo of our own acked message: adopt the server's time and text.
    if (ev.type === 'message') {
      adoptEvent(known, ev);
      if (fromHistory || !states.byId.has(ev.id)) states.message(ev, fromHistory ? historyBatch : null);
      decorate(ev.id);
    }
    return;
  }

  // One of our unconfirmed messages, by its id: it is posted.
  const own = room.outbox?.confirmed(ev.id);
  if (own) {
    const node = room.nodes.get(own.id);
    room.nodes.delete(own.id);
    if (!fromHistory && node?.isConnected) {
      showConfirmed(node);
      adoptEvent(node, ev);
      list.remember(ev.id, node);
      states.message(ev);
      decorate(ev.id);
      return;
    }
    node?.remove(); // history: shown where the history has it
  }

  let node;
  const when = parseTime(ev.at);
  const self = auth.self || { user: room.name, verified: false };
  if (ev.type === 'message') {
    if (typeof ev.text !== 'string' && ev.deleted !== true) return;
    node = buildMessage(authorLabel(ev), ev.text ?? '', when, isOwn(ev, self));
    states.message(ev, fromHistory ? historyBatch : null);
  } else {
    const line = systemLine(ev);
    if (line === null) return; // unknown event type: ignore
    node = buildSystem(line, when);
  }
  list.remember(ev.id, node);
  list.append(node, when, ev.type === 'message' ? ev.user : null, !fromHistory);
  if (ev.type === 'message') decorate(ev.id);
  if (!fromHistory && document.hidden) {
    unread += 1;
    updateTitle();
  }
}

/** The page's own user id (token mode) or guest name, as events carry it. */
function selfUser() {
  return auth.self?.user ?? room.name;
}

/**
 * Draws message `id` as its state has it, with the tools this user may use: reactions for
 * everyone, Edit and Delete on their own messages, Delete on others' for verified users
 * (the gateway lets only the room's owner and moderators through; others get `forbidden`).
 */
function decorate(id) {
  const node = list.byId.get(id);
  const state = states.byId.get(id);
  if (!node || !state || node.classList.contains('system')) return;
  const self = auth.self || { user: room.name, verified: false };
  const own = isOwn({ user: state.user, guest: state.guest }, self);
  const view = states.view(id, selfUser());
  showMessageState(node, view, {
    own,
    moderate: !!auth.self?.verified,
    onReact: (key) => sendAction(reactFrame(room.id, id, key, states.view(id, selfUser()))),
    onEdit: () => openEditor(node, states.view(id, selfUser())?.text, {
      onSave: (raw) => {
        const text = outgoingText(raw);
        const problem = textProblem(text, limits.max_text);
        if (problem) {
          showBanner(el.banner, problem, 'invalid_text');
          return;
        }
        closeEditor(node);
        sendAction({ type: 'edit', room: room.id, target: id, text });
      },
      onCancel: () => {
        closeEditor(node);
        node.querySelector('.tool.edit')?.focus();
      },
    }),
    onDelete: () => confirmDelete(node, {
      onConfirm: () => sendAction({ type: 'delete', room: room.id, target: id }),
      onCancel: () => {
        decorate(id);
        node.querySelector('.tool.delete')?.focus();
      },
    }),
  });
}

/** Sends an edit, delete or react; a refusal shows in the banner with its reason. */
function sendAction(frame) {
  if (!room.joined || !conn.isOpen) {
    showBanner(el.banner, 'Not connected: try again when the chat is back.', 'unavailable');
    return;
  }
  const ref = nextRef('a');
  awaiting.set(ref, (answer) => {
    if (answer.type === 'error') showBanner(el.banner, answer.message || answer.code, answer.code);
  });
  conn.send({ ...frame, ref });
}

function onAck(msg) {
  const waiter = awaiting.get(msg.ref);
  if (waiter) {
    awaiting.delete(msg.ref);
    waiter(msg);
    return;
  }
  const outbox = room.outbox;
  if (!outbox) return;
  const id = typeof msg.id === 'string' ? msg.id : '';
  // By id (the gateway posts our id); by ref for a gateway that makes its own ids.
  const e = outbox.get(id) || outbox.byRef(msg.ref);
  if (!e) return;
  outbox.confirmed(e.id);
  const node = room.nodes.get(e.id);
  room.nodes.delete(e.id);
  if (!node) return;
  if (id && list.byId.has(id)) {
    // The live event overtook its ack and is already shown: drop the pending copy.
    node.remove();
    return;
  }
  showConfirmed(node);
  if (id) list.remember(id, node);
}

function onError(msg) {
  const code = typeof msg.code === 'string' ? msg.code : 'error';
  const text = typeof msg.message === 'string' && msg.message ? msg.message : code;
  const ref = msg.ref;
  const waiter = awaiting.get(ref);
  if (waiter) {
    awaiting.delete(ref);
    waiter(msg);
    return;
  }

  if (code === 'bad_since') {
    // The server does not know our last id: the `joined` that follows carries the normal
    // history, which replaces the list.
    room.resetOnJoined = true;
    room.lastId = null;
    return;
  }

  const answer = room.outbox?.errored(ref, code, text);
  if (answer) {
    if (answer.outcome === 'rejoin') {
      // The gateway lost our membership (e.g. it restarted): rejoin, which resends.
      if (room.joined) sendJoin();
    } else {
      showOutcome(answer.entry);
    }
    return;
  }

  if (ref !== undefined && ref === room.joinRef) {
    if (['invalid_room', 'invalid_name', 'invalid_field', 'missing_field', 'forbidden'].includes(code)) {
      // The server refused what the user typed: back to the form with its reason.
      showJoinView(text);
      return;
    }
    showBanner(el.banner, text, code);
    if (code === 'unavailable' || code === 'rate_limited') {
      // Try the join again later on the same connection.
      const id = room.id;
      room.joinRetryTimer = setTimeout(() => {
        if (conn.isOpen && room.id === id && !room.joined) sendJoin();
      }, 2000 + Math.random() * 2000);
    }
    return;
  }
  showBanner(el.banner, text, code);
}

// ---------------------------------------------------------------- sending

/** Shows a new or restored message of ours in the state the outbox has it in. */
function showOwn(e) {
  const label = auth.self?.verified ? room.name : `${room.name} (guest)`;
  const node = buildMessage(label, e.text, new Date(e.at), true);
  room.nodes.set(e.id, node);
  showOutcome(e);
  list.append(node, new Date(), room.name, false);
  list.scrollToBottom();
}

function showOutcome(e) {
  const node = room.nodes.get(e.id);
  if (!node) return;
  if (e.status === FAILED || e.status === REFUSED) {
    showFailed(node, {
      reason: e.error,
      // Every retry carries the message's id, so the server posts it at most once.
      safe: retryIsSafe(e.code),
      refused: e.status === REFUSED,
      onRetry: e.status === FAILED ? () => retry(e.id) : null,
      onDiscard: () => discard(e.id),
    });
  } else {
    showPending(node);
  }
}

/** Sends a queued message now if joined; otherwise the next `joined` does. */
function transmit(e) {
  if (!room.joined || !conn.isOpen || e.status !== QUEUED) return;
  conn.send(room.outbox.transmit(e));
}

function retry(id) {
  const e = room.outbox?.retry(id);
  if (!e) return;
  showOutcome(e);
  transmit(e);
  conn.reconnectNow();
}

function discard(id) {
  room.outbox?.discard(id);
  room.nodes.get(id)?.remove();
  room.nodes.delete(id);
}

function submitComposer() {
  if (!room.id) return;
  const text = outgoingText(el.text.value);
  if (textProblem(text, limits.max_text)) {
    updateComposer();
    return;
  }
  const e = room.outbox.add(text);
  showOwn(e);
  transmit(e);
  signalTyping(presence.signal.stop());
  conn.reconnectNow();
  el.text.value = '';
  updateComposer();
  el.text.focus();
}

/** Send button state, length counter and textarea auto-height. */
function updateComposer() {
  const raw = el.text.value;
  el.send.disabled = textProblem(outgoingText(raw), limits.max_text) !== null;
  const n = charCount(normalizeText(raw));
  el.counter.hidden = !(n > limits.max_text * 0.9);
  el.counter.textContent = `${n} / ${limits.max_text}`;
  el.counter.classList.toggle('over', n > limits.max_text);
  // Grow with the content up to the CSS max-height (set via CSSOM, allowed by the CSP).
  el.text.style.height = 'auto';
  el.text.style.height = `${el.text.scrollHeight}px`;
}

// ---------------------------------------------------------------- views

function updateTitle() {
  const base = room.id ? `#${room.id} · Chat` : 'Chat';
  document.title = unread ? `(${unread}) ${base}` : base;
}

/** Shows the sign-in step (over whatever the page shows; the room is kept). */
function showLogin(reason) {
  el.loginView.hidden = false;
  el.joinView.hidden = true;
  el.chatView.hidden = true;
  el.loginError.hidden = !reason;
  el.loginError.textContent = reason || '';
  el.tokenInput.focus();
}

/** Back from the sign-in step to the room, or to the join form. */
function hideLogin() {
  if (el.loginView.hidden) return;
  el.loginView.hidden = true;
  el.loginError.hidden = true;
  el.tokenInput.value = '';
  if (room.id) el.chatView.hidden = false;
  else el.joinView.hidden = false;
}

function onLoginSubmit(ev) {
  ev.preventDefault();
  const token = el.tokenInput.value.trim();
  if (!looksLikeJwt(token)) {
    el.loginError.hidden = false;
    el.loginError.textContent = 'That does not look like a token (three parts separated by dots).';
    return;
  }
  auth.token = token;
  sessionSet(STORE_TOKEN, token);
  if (conn.isOpen && auth.mode === 'token') conn.send({ type: 'auth', token });
  else conn.reconnectNow();
}

function onMemberSubmit(ev) {
  ev.preventDefault();
  const user = el.member.value.trim();
  if (!user || !room.id) return;
  const ref = nextRef('m');
  awaiting.set(ref, (answer) => {
    if (answer.type === 'ack') {
      showBanner(el.banner, `${user} can now read #${room.id}`, 'member_added');
      el.member.value = '';
    } else {
      showBanner(el.banner, answer.message || answer.code, answer.code);
    }
  });
  conn.send({ type: 'add_member', room: room.id, user, ref });
}

function showJoinView(error) {
  if (room.id && room.joined) conn.send({ type: 'leave', room: room.id, ref: nextRef('l') });
  clearTimeout(room.joinRetryTimer);
  // Unconfirmed messages stay stored: they come back when the room is joined again.
  Object.assign(room, { id: null, joined: false, joinRef: null, lastId: null, outbox: null });
  room.nodes.clear();
  list.clear();
  el.chatView.hidden = true;
  el.joinView.hidden = false;
  el.leave.hidden = true;
  el.roomTitle.textContent = 'Chat';
  el.whoami.textContent = '';
  el.lock.hidden = true;
  el.memberForm.hidden = true;
  resetPresence();
  el.joinError.hidden = !error;
  el.joinError.textContent = error || '';
  updateTitle();
  el.name.value = storeGet(STORE_NAME) || el.name.value;
  el.room.value = storeGet(STORE_ROOM) || el.room.value;
  (el.name.value ? el.joinButton : el.name).focus();
}

function enterRoom(name, id) {
  Object.assign(room, { name, id, lastId: null, joined: false });
  room.nodes.clear();
  list.clear();
  room.outbox = new Outbox({ room: id, name, storage: storage() });
  el.joinView.hidden = true;
  el.chatView.hidden = false;
  el.leave.hidden = false;
  el.roomTitle.textContent = `# ${id}`;
  el.whoami.textContent = auth.self?.verified ? `as ${name} (${auth.self.user})` : `as ${name} (guest)`;
  updateTitle();
  list.stick = true;
  // Messages left unconfirmed by an earlier visit (a reload, a crash): shown now, sent
  // again with their ids once joined.
  for (const e of room.outbox.list()) showOwn(e);
  if (list.isEmpty) list.setPhase('joining');
  if (conn.isOpen) sendJoin();
  else if (!conn.ws) conn.connect(); // waiting for a retry: go now, the user is waiting
  updateComposer();
  el.text.focus();
}

function onJoinSubmit(ev) {
  ev.preventDefault();
  if (auth.mode === 'token') {
    joinVerified();
    return;
  }
  const [name, nameErr] = checkName(el.name.value, limits.max_name);
  const [id, roomErr] = checkRoom(el.room.value);
  el.name.setAttribute('aria-invalid', String(!!nameErr));
  el.room.setAttribute('aria-invalid', String(!!roomErr));
  const err = nameErr || roomErr;
  el.joinError.hidden = !err;
  el.joinError.textContent = err || '';
  if (err) {
    (nameErr ? el.name : el.room).focus();
    return;
  }
  storeSet(STORE_NAME, name);
  storeSet(STORE_ROOM, id);
  enterRoom(name, id);
}

/** Token mode: join (or first create, privately) a room as the verified user. */
function joinVerified() {
  const [id, roomErr] = checkRoom(el.room.value);
  el.room.setAttribute('aria-invalid', String(!!roomErr));
  el.joinError.hidden = !roomErr;
  el.joinError.textContent = roomErr || '';
  if (roomErr) return;
  if (!auth.self) {
    showLogin(null);
    return;
  }
  storeSet(STORE_ROOM, id);
  if (!el.private.checked) {
    enterRoom(auth.self.name, id);
    return;
  }
  const ref = nextRef('c');
  awaiting.set(ref, (answer) => {
    if (answer.type === 'ack') {
      el.private.checked = false;
      enterRoom(auth.self.name, id);
    } else {
      el.joinError.hidden = false;
      el.joinError.textContent = answer.message || answer.code;
    }
  });
  conn.send({ type: 'create_room', room: id, visibility: 'private', ref });
}

// ---------------------------------------------------------------- wiring

el.loginForm.addEventListener('submit', onLoginSubmit);
el.memberForm.addEventListener('submit', onMemberSubmit);

el.joinForm.addEventListener('submit', onJoinSubmit);
for (const input of [el.name, el.room]) {
  input.addEventListener('input', () => {
    input.removeAttribute('aria-invalid');
    el.joinError.hidden = true;
  });
}
el.leave.addEventListener('click', () => showJoinView(null));

$('composer').addEventListener('submit', (ev) => {
  ev.preventDefault();
  submitComposer();
});
el.text.addEventListener('keydown', (ev) => {
  // Enter sends, Shift+Enter inserts a newline; never while an IME is composing.
  if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing && ev.keyCode !== 229) {
    ev.preventDefault();
    submitComposer();
  }
});
el.text.addEventListener('input', () => {
  updateComposer();
  signalTyping(presence.signal.input(el.text.value, Date.now()));
});

window.addEventListener('online', () => conn.reconnectNow());
document.addEventListener('visibilitychange', () => {
  if (document.hidden) return;
  unread = 0;
  updateTitle();
  conn.reconnectNow();
});

el.name.value = storeGet(STORE_NAME) || '';
el.room.value = storeGet(STORE_ROOM) || 'lobby';
(el.name.value ? el.joinButton : el.name).focus();
conn.connect();
