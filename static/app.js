// app.js — the entry point of the chat page (static/index.html): the join form, the room
// (join and rejoin with `since`, history then live events), the composer, and the wiring
// between the connection (connection.js), the outbox of unconfirmed messages (pending.js)
// and the DOM (render.js). No framework and no build step: native ES modules.

import { Connection } from './connection.js';
import {
  DEFAULT_LIMITS, charCount, checkName, checkRoom, normalizeText, outgoingText, textProblem,
} from './normalize.js';
import { FAILED, Outbox, QUEUED, REFUSED, retryIsSafe } from './pending.js';
import {
  MessageList, adoptEvent, buildMessage, buildSystem, parseTime, showBanner, showConfirmed,
  showFailed, showPending,
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
};

/** Limits announced by the gateway in `hello`. */
const limits = { ...DEFAULT_LIMITS };

const params = new URLSearchParams(location.search);
const conn = new Connection(gatewayUrls(), {
  // For tests: ?ping_ms=&dead_ms= shorten the heartbeat (see connection.js).
  pingAfterMs: Number(params.get('ping_ms')),
  deadAfterMs: Number(params.get('dead_ms')),
});
const list = new MessageList($('messages'), $('jump'));

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

conn.addEventListener('open', () => {
  // The server greets with `hello` but reads our frames in order anyway, so the join can
  // go out at once.
  if (room.id) sendJoin();
});

conn.addEventListener('close', () => {
  room.joined = false;
  clearTimeout(room.joinRetryTimer);
  el.gateway.textContent = '—';
  el.gateway.title = '';
  // Unanswered messages go out again, with their ids, after the rejoin.
  room.outbox?.connectionLost();
});

conn.addEventListener('frame', ({ detail: { frame } }) => {
  switch (frame.type) {
    case 'hello': onHello(frame); break;
    case 'joined': onJoined(frame); break;
    case 'event': onEvent(frame.event, false); break;
    case 'ack': onAck(frame); break;
    case 'error': onError(frame); break;
    default: break; // `left` and anything unknown need nothing
  }
});

function sendJoin() {
  clearTimeout(room.joinRetryTimer);
  room.joined = false;
  room.joinRef = nextRef('j');
  const frame = { type: 'join', room: room.id, name: room.name, ref: room.joinRef };
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
  updateComposer();
}

function onJoined(msg) {
  if (!room.id || msg.room !== room.id) return;
  if (msg.ref !== undefined && msg.ref !== room.joinRef) return; // answer to an older join
  room.joined = true;
  const history = Array.isArray(msg.history) ? msg.history.filter(validEvent) : [];

  // Unconfirmed own messages always stay at the bottom: take them out while the history
  // goes in (which may confirm some of them, by id), then put the rest back.
  for (const node of room.nodes.values()) node.remove();
  if (room.resetOnJoined) list.clear();
  room.resetOnJoined = false;

  for (const ev of history) onEvent(ev, true);

  for (const e of room.outbox.list()) {
    list.append(room.nodes.get(e.id), new Date(), room.name, false);
  }
  for (const e of room.outbox.queued()) transmit(e);
  list.setPhase(list.isEmpty ? 'empty' : '');
  list.scrollToBottom();
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

  const known = list.byId.get(ev.id);
  if (known) {
    // Usually the echo of our own acked message: adopt the server's time and text.
    if (ev.type === 'message') adoptEvent(known, ev);
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
      return;
    }
    node?.remove(); // history: shown where the history has it
  }

  let node;
  const when = parseTime(ev.at);
  if (ev.type === 'message') {
    if (typeof ev.text !== 'string') return;
    node = buildMessage(ev.user, ev.text, when, ev.user === room.name);
  } else if (ev.type === 'join' || ev.type === 'leave') {
    node = buildSystem(`${ev.user} ${ev.type === 'join' ? 'joined' : 'left'}`, when);
  } else {
    return; // unknown event type: ignore
  }
  list.remember(ev.id, node);
  list.append(node, when, ev.type === 'message' ? ev.user : null, !fromHistory);
  if (!fromHistory && document.hidden) {
    unread += 1;
    updateTitle();
  }
}

function onAck(msg) {
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
    if (['invalid_room', 'invalid_name', 'invalid_field', 'missing_field'].includes(code)) {
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
  const node = buildMessage(room.name, e.text, new Date(e.at), true);
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
  el.whoami.textContent = `as ${name}`;
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

// ---------------------------------------------------------------- wiring

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
el.text.addEventListener('input', updateComposer);

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
