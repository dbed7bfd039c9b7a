// app.js — behaviour of the chat page (static/index.html): the join form, the websocket
// connection to a gateway (reconnect with backoff and jitter, failover across ?gw= URLs,
// rejoin with `since`), rendering of history and live events, and optimistic sends that
// stay pending until acked. No framework and no build step. User-supplied text only ever
// reaches the DOM through textContent / attribute values, never through HTML parsing.
'use strict';

(() => {
  // ---------------------------------------------------------------- constants & elements

  const ROOM_RE = /^[A-Za-z0-9_-]{1,64}$/;
  // Characters the server refuses in names and silently drops from text (see
  // chat-core normalize.rs): controls, line/paragraph separators, bidi controls.
  const FORBIDDEN_RE = /[\p{Cc}\u2028\u2029\u200E\u200F\u061C\u202A-\u202E\u2066-\u2069]/u;
  const FORBIDDEN_RE_G = new RegExp(FORBIDDEN_RE.source, 'gu');
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 10000;
  const CONNECT_TIMEOUT_MS = 10000;
  const STICK_PX = 48; // "at the bottom" tolerance for autoscroll
  const GROUP_MS = 5 * 60 * 1000; // consecutive messages closer than this are grouped
  const STORE_NAME = 'chat.name';
  const STORE_ROOM = 'chat.room';

  const $ = (id) => document.getElementById(id);
  const el = {
    header: $('header'),
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
    messages: $('messages'),
    jump: $('jump'),
    composer: $('composer'),
    text: $('text'),
    counter: $('counter'),
    send: $('send'),
  };

  // Limits announced by the gateway in `hello`; these defaults match the server's.
  const limits = { max_text: 4000, max_name: 32, max_frame: 16384 };

  // ---------------------------------------------------------------- state

  const state = {
    urls: gatewayUrls(),
    urlIndex: 0,
    ws: null,
    conn: 'idle', // idle | connecting | connected | reconnecting
    attempt: 0, // consecutive failed connections, drives the backoff
    retryTimer: 0,
    retryAt: 0,
    countdownTimer: 0,
    connectTimer: 0,

    name: null, // normalised name we joined with
    room: null, // room we are in (or joining); null on the join form
    joined: false, // server confirmed the join on the current socket
    joinRef: null,
    resetOnJoined: false, // next `joined` replaces the list instead of appending
    joinRetryTimer: 0,
    lastId: null, // id of the last event seen in state.room (sent as `since`)

    byId: new Map(), // event id -> rendered element
    pending: new Map(), // ref -> {ref, text, el, status, notJoined}
    refSeq: 0,
    tail: null, // {day, user, ts} of the last appended item, for grouping
    stick: true, // autoscroll while the user is at the bottom
    unread: 0, // new events while the tab is hidden (shown in the title)
  };

  // ---------------------------------------------------------------- small helpers

  /** Gateway websocket URLs: `?gw=a,b,c` or ws(s)://<this host>/ws. */
  function gatewayUrls() {
    const param = new URLSearchParams(location.search).get('gw');
    if (param) {
      const list = param.split(',').map((s) => s.trim()).filter(Boolean);
      if (list.length) return list;
    }
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return [`${proto}//${location.host}/ws`];
  }

  function nextRef(prefix) {
    state.refSeq += 1;
    return `${prefix}-${state.refSeq}`;
  }

  /** Length in Unicode scalar values, as Rust's chars().count(). */
  function charCount(s) {
    return Array.from(s).length;
  }

  /** Mirrors chat-core's name normalisation; returns [value, error]. */
  function checkName(raw) {
    const v = raw.normalize('NFC').trim();
    if (!v || charCount(v) > limits.max_name || FORBIDDEN_RE.test(v)) {
      return [null, `Name must be 1 to ${limits.max_name} characters, without control characters.`];
    }
    return [v, null];
  }

  function checkRoom(raw) {
    const v = raw.trim();
    if (!ROOM_RE.test(v)) {
      return [null, 'Room must be 1 to 64 characters of A–Z, a–z, 0–9, “_” or “-”.'];
    }
    return [v, null];
  }

  /** Mirrors chat-core's text normalisation (what the server will store). */
  function normalizeText(raw) {
    return raw
      .normalize('NFC')
      .replace(/\r\n?/g, '\n')
      .replace(/\t/g, ' ')
      .replace(FORBIDDEN_RE_G, (c) => (c === '\n' ? c : ''));
  }

  /** Text as we send it: trailing white space and leading blank lines removed. */
  function outgoingText(raw) {
    return raw.replace(/^(?:[ \t]*\r?\n)+/, '').replace(/\s+$/, '');
  }

  function textProblem(raw) {
    const norm = normalizeText(raw);
    if (!norm.trim()) return 'empty';
    const n = charCount(norm);
    if (n > limits.max_text) return `Too long: ${n} / ${limits.max_text} characters.`;
    return null;
  }

  function storeGet(key) {
    try { return localStorage.getItem(key); } catch { return null; }
  }

  function storeSet(key, value) {
    try { localStorage.setItem(key, value); } catch { /* private mode: ignore */ }
  }

  function make(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const pad2 = (n) => String(n).padStart(2, '0');

  function parseTime(at) {
    const d = typeof at === 'string' ? new Date(at) : new Date(NaN);
    return Number.isNaN(d.getTime()) ? new Date() : d;
  }

  function dayKey(d) {
    return `${d.getFullYear()}-${d.getMonth()}-${d.getDate()}`;
  }

  function dayLabel(d) {
    const today = new Date();
    const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
    if (dayKey(d) === dayKey(today)) return 'Today';
    if (dayKey(d) === dayKey(yesterday)) return 'Yesterday';
    return d.toLocaleDateString(undefined, {
      weekday: 'long', day: 'numeric', month: 'long',
      year: d.getFullYear() === today.getFullYear() ? undefined : 'numeric',
    });
  }

  /** <time class="time"> with local HH:MM, full timestamp in title. */
  function timeElement(d) {
    const t = make('time', 'time');
    setFullTime(t, d);
    return t;
  }

  function setFullTime(t, d) {
    t.dateTime = d.toISOString();
    t.textContent = `${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
    t.title = d.toLocaleString(undefined, {
      weekday: 'short', year: 'numeric', month: 'short', day: 'numeric',
      hour: '2-digit', minute: '2-digit', second: '2-digit', timeZoneName: 'short',
    });
  }

  /** Stable colour class for a user name (hue-0 .. hue-9 in style.css). */
  function hueClass(user) {
    let h = 0;
    for (const c of user) h = (h * 31 + c.codePointAt(0)) >>> 0;
    return `hue-${h % 10}`;
  }

  function initial(user) {
    const first = Array.from(user.trim())[0] || '?';
    return first.toUpperCase();
  }

  // ---------------------------------------------------------------- connection

  function setConn(conn, text) {
    state.conn = conn;
    el.status.dataset.state = conn;
    el.status.textContent = text;
    el.status.title = state.urls[state.urlIndex] || '';
  }

  function clearConnTimers() {
    clearTimeout(state.retryTimer);
    clearInterval(state.countdownTimer);
    clearTimeout(state.connectTimer);
    state.retryTimer = 0;
    state.countdownTimer = 0;
    state.connectTimer = 0;
  }

  function connect() {
    clearConnTimers();
    const url = state.urls[state.urlIndex];
    setConn('connecting', 'connecting…');
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (err) {
      // Malformed URL in ?gw=: treat like a failed connection and move on to the next one.
      console.warn('cannot open websocket', url, err);
      scheduleReconnect(0);
      return;
    }
    state.ws = ws;
    // A socket stuck in CONNECTING (e.g. packets dropped) would never fire close on its own.
    state.connectTimer = setTimeout(() => {
      if (ws.readyState === WebSocket.CONNECTING) ws.close();
    }, CONNECT_TIMEOUT_MS);

    ws.addEventListener('open', () => {
      if (ws !== state.ws) return;
      clearTimeout(state.connectTimer);
      setConn('connected', 'connected');
      // The server greets with `hello` but reads our frames in order anyway, so the join
      // can go out at once.
      if (state.room) sendJoin();
    });
    ws.addEventListener('message', (ev) => {
      if (ws !== state.ws) return;
      if (typeof ev.data === 'string') handleFrame(ev.data);
    });
    ws.addEventListener('close', (ev) => {
      if (ws !== state.ws) return;
      onSocketClosed(ev.code);
    });
    // 'error' is always followed by 'close', which does the work.
  }

  function onSocketClosed(code) {
    state.ws = null;
    state.joined = false;
    clearTimeout(state.joinRetryTimer);
    el.gateway.textContent = '—';
    el.gateway.title = '';
    // Sent but unacknowledged messages may or may not have been stored: reconcile them
    // against the replayed history after the rejoin.
    for (const p of state.pending.values()) {
      if (p.status === 'sent') p.status = 'unconfirmed';
    }
    scheduleReconnect(code);
  }

  /** Exponential backoff 0.5 s doubling to 10 s with "equal jitter"; next URL each time. */
  function scheduleReconnect(code) {
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** state.attempt);
    let delay = base / 2 + Math.random() * (base / 2);
    // 1012 = service restart: another gateway (or the restarted one) is ready very soon.
    if (code === 1012 && state.attempt === 0) delay = 50 + Math.random() * 250;
    state.attempt += 1;
    state.urlIndex = (state.urlIndex + 1) % state.urls.length;
    state.retryAt = Date.now() + delay;
    clearConnTimers();
    state.retryTimer = setTimeout(connect, delay);
    const tick = () => {
      const secs = Math.max(1, Math.ceil((state.retryAt - Date.now()) / 1000));
      setConn('reconnecting', `reconnecting in ${secs}s`);
    };
    tick();
    state.countdownTimer = setInterval(tick, 250);
  }

  /** Skip the remaining backoff (user action, network back, tab visible again). */
  function reconnectNow() {
    if (state.conn === 'reconnecting') connect();
  }

  function send(frame) {
    const ws = state.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  function sendJoin() {
    clearTimeout(state.joinRetryTimer);
    state.joined = false;
    state.joinRef = nextRef('j');
    const frame = { type: 'join', room: state.room, name: state.name, ref: state.joinRef };
    if (state.lastId) {
      frame.since = state.lastId;
    } else {
      state.resetOnJoined = true; // nothing seen yet: take the history as the whole list
    }
    if (!el.messages.firstChild) setPhase('joining');
    send(frame);
  }

  // ---------------------------------------------------------------- incoming frames

  function handleFrame(data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    if (!msg || typeof msg !== 'object') return;
    switch (msg.type) {
      case 'hello': onHello(msg); break;
      case 'joined': onJoined(msg); break;
      case 'event': onEvent(msg.event, false); break;
      case 'ack': onAck(msg); break;
      case 'error': onError(msg); break;
      default: break; // `left` and anything unknown need nothing
    }
  }

  function onHello(msg) {
    state.attempt = 0; // a gateway that talks to us resets the backoff
    const gw = typeof msg.gateway === 'string' && msg.gateway ? msg.gateway : '?';
    el.gateway.textContent = gw;
    el.gateway.title = `${gw} — ${state.urls[state.urlIndex]}`;
    const l = msg.limits;
    if (l && typeof l === 'object') {
      for (const k of ['max_text', 'max_name', 'max_frame']) {
        if (Number.isInteger(l[k]) && l[k] > 0) limits[k] = l[k];
      }
    }
    updateComposer();
  }

  function onJoined(msg) {
    if (!state.room || msg.room !== state.room) return;
    if (msg.ref !== undefined && msg.ref !== state.joinRef) return; // answer to an older join
    state.joined = true;
    const history = Array.isArray(msg.history) ? msg.history.filter(validEvent) : [];

    // Unacknowledged own messages always stay at the bottom: take them out while the
    // history goes in, then put them back.
    const waiting = [...state.pending.values()];
    for (const p of waiting) p.el.remove();

    if (state.resetOnJoined) clearList();
    state.resetOnJoined = false;

    // Messages whose ack was lost with the old connection: if the history holds them they
    // were stored, so drop the pending copy (the history renders it) instead of resending.
    const claimed = new Set();
    for (const p of waiting) {
      if (p.status !== 'unconfirmed') continue;
      const want = normalizeText(p.text);
      const hit = history.find((ev) => ev.type === 'message' && ev.user === state.name
        && ev.text === want && !claimed.has(ev.id));
      if (hit) {
        claimed.add(hit.id);
        state.pending.delete(p.ref);
      }
    }

    for (const ev of history) onEvent(ev, true);

    for (const p of waiting) {
      if (!state.pending.has(p.ref)) continue;
      appendItem(p.el, new Date(), state.name, false);
      if (p.status !== 'failed') transmit(p);
    }
    setPhase(el.messages.querySelector('.msg') ? '' : 'empty');
    scrollToBottom();
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
    if (!validEvent(ev) || !state.room || ev.room !== state.room) return;
    if (!fromHistory && !state.joined) return; // stray event from before a (re)join
    state.lastId = ev.id;

    const known = state.byId.get(ev.id);
    if (known) {
      // Usually the echo of our own acked message: adopt the server's time and text.
      if (ev.type === 'message' && typeof ev.text === 'string') {
        const t = known.querySelector('.time');
        if (t && typeof ev.at === 'string') setFullTime(t, parseTime(ev.at));
        const body = known.querySelector('.text');
        if (body) body.textContent = ev.text;
      }
      return;
    }

    let node;
    const when = parseTime(ev.at);
    if (ev.type === 'message') {
      if (typeof ev.text !== 'string') return;
      node = buildMessage(ev.user, ev.text, when, ev.user === state.name);
    } else if (ev.type === 'join' || ev.type === 'leave') {
      node = buildSystem(`${ev.user} ${ev.type === 'join' ? 'joined' : 'left'}`, when);
    } else {
      return; // unknown event type: ignore
    }
    node.dataset.id = ev.id;
    state.byId.set(ev.id, node);
    const grouped = ev.type === 'message';
    appendItem(node, when, grouped ? ev.user : null, !fromHistory);
    if (!fromHistory && document.hidden) {
      state.unread += 1;
      updateTitle();
    }
  }

  function onAck(msg) {
    const p = state.pending.get(msg.ref);
    if (!p) return;
    state.pending.delete(msg.ref);
    const id = typeof msg.id === 'string' ? msg.id : '';
    if (id && state.byId.has(id)) {
      // The live event overtook its ack and is already shown: drop the pending copy.
      p.el.remove();
      return;
    }
    p.el.classList.remove('pending', 'failed');
    p.el.querySelector('.clock')?.remove();
    if (id) {
      p.el.dataset.id = id;
      state.byId.set(id, p.el);
    }
  }

  function onError(msg) {
    const code = typeof msg.code === 'string' ? msg.code : 'error';
    const text = typeof msg.message === 'string' && msg.message ? msg.message : code;
    const ref = msg.ref;

    if (code === 'bad_since') {
      // The server does not know our last id: the `joined` that follows carries the
      // normal history, which replaces the list.
      state.resetOnJoined = true;
      state.lastId = null;
      return;
    }

    const p = ref !== undefined ? state.pending.get(ref) : undefined;
    if (p) {
      state.pending.delete(p.ref);
      if (code === 'not_joined' && p.notJoined < 2) {
        // The gateway lost our membership (e.g. it restarted): rejoin and resend.
        p.notJoined += 1;
        p.status = 'queued';
        p.ref = nextRef('c');
        state.pending.set(p.ref, p);
        if (state.joined) sendJoin();
        return;
      }
      state.pending.set(p.ref, p);
      markFailed(p, text);
      return;
    }

    if (ref !== undefined && ref === state.joinRef) {
      if (['invalid_room', 'invalid_name', 'invalid_field', 'missing_field'].includes(code)) {
        // The server refused what the user typed: back to the form with its reason.
        showJoinView(text);
        return;
      }
      showBanner(text, code);
      if (code === 'unavailable' || code === 'rate_limited') {
        // Try the join again later on the same connection.
        const room = state.room;
        state.joinRetryTimer = setTimeout(() => {
          const open = state.ws && state.ws.readyState === WebSocket.OPEN;
          if (open && state.room === room && !state.joined) sendJoin();
        }, 2000 + Math.random() * 2000);
      }
      return;
    }
    showBanner(text, code);
  }

  // ---------------------------------------------------------------- rendering

  function buildMessage(user, text, when, own) {
    const node = make('div', own ? 'msg own' : 'msg');
    const avatar = make('div', `avatar ${hueClass(user)}`, initial(user));
    avatar.setAttribute('aria-hidden', 'true');
    const bubble = make('div', 'bubble');
    const meta = make('div', 'meta');
    meta.append(make('span', `author ${hueClass(user)}`, user), timeElement(when));
    bubble.append(meta, make('div', 'text', text));
    node.append(avatar, bubble);
    return node;
  }

  function buildSystem(line, when) {
    const node = make('div', 'msg system');
    node.append(make('span', 'text', line), timeElement(when));
    return node;
  }

  /**
   * Appends a list item, with a day separator when the day changes and the `grouped`
   * class when it continues the previous author's run of messages.
   */
  function appendItem(node, when, user, live) {
    const day = dayKey(when);
    if (!state.tail || state.tail.day !== day) {
      const sep = make('div', 'day-sep');
      sep.append(make('span', '', dayLabel(when)));
      el.messages.append(sep);
    }
    const t = when.getTime();
    const cont = user !== null && state.tail && state.tail.user === user
      && state.tail.day === day && t - state.tail.ts < GROUP_MS;
    node.classList.toggle('grouped', !!cont);
    state.tail = { day, user, ts: t };
    el.messages.append(node);
    setPhase('');
    if (state.stick) {
      scrollToBottom();
    } else if (live) {
      el.jump.hidden = false;
    }
  }

  function clearList() {
    el.messages.replaceChildren();
    state.byId.clear();
    state.tail = null;
  }

  /** '' | 'joining' | 'empty' — drives a placeholder drawn by CSS in the empty list. */
  function setPhase(phase) {
    if (phase) el.messages.dataset.phase = phase;
    else delete el.messages.dataset.phase;
  }

  function scrollToBottom() {
    el.messages.scrollTop = el.messages.scrollHeight;
    state.stick = true;
    el.jump.hidden = true;
  }

  // ---------------------------------------------------------------- sending

  function addPending(text) {
    const node = buildMessage(state.name, text, new Date(), true);
    node.classList.add('pending');
    const clock = make('span', 'clock');
    clock.title = 'Sending…';
    clock.setAttribute('role', 'img');
    clock.setAttribute('aria-label', 'sending');
    node.querySelector('.meta').append(clock);
    const p = { ref: nextRef('c'), text, el: node, status: 'queued', notJoined: 0 };
    state.pending.set(p.ref, p);
    appendItem(node, new Date(), state.name, false);
    scrollToBottom();
    return p;
  }

  /** Sends a pending message now if joined; otherwise it waits for the next `joined`. */
  function transmit(p) {
    if (!state.joined) {
      p.status = 'queued';
      return;
    }
    if (send({ type: 'say', room: state.room, text: p.text, ref: p.ref })) p.status = 'sent';
  }

  function markFailed(p, message) {
    p.status = 'failed';
    const node = p.el;
    node.classList.remove('pending');
    node.classList.add('failed');
    node.querySelector('.clock')?.remove();
    node.querySelector('.error')?.remove();

    const box = make('div', 'error');
    box.append(make('span', 'error-icon', '!'), make('span', 'error-text', message));
    const retry = make('button', 'link', 'Retry');
    retry.type = 'button';
    retry.addEventListener('click', () => {
      box.remove();
      node.classList.remove('failed');
      node.classList.add('pending');
      const clock = make('span', 'clock');
      clock.title = 'Sending…';
      node.querySelector('.meta').append(clock);
      state.pending.delete(p.ref);
      p.ref = nextRef('c');
      p.notJoined = 0;
      state.pending.set(p.ref, p);
      transmit(p);
    });
    const discard = make('button', 'link', 'Discard');
    discard.type = 'button';
    discard.addEventListener('click', () => {
      state.pending.delete(p.ref);
      node.remove();
    });
    box.append(retry, discard);
    node.querySelector('.bubble').append(box);
  }

  function submitComposer() {
    if (!state.room) return;
    const text = outgoingText(el.text.value);
    const problem = textProblem(text);
    if (problem) {
      updateComposer();
      return;
    }
    const p = addPending(text);
    transmit(p);
    if (state.conn === 'reconnecting') reconnectNow();
    el.text.value = '';
    updateComposer();
    el.text.focus();
  }

  /** Send button state, length counter and textarea auto-height. */
  function updateComposer() {
    const raw = el.text.value;
    const problem = textProblem(outgoingText(raw));
    el.send.disabled = problem !== null;
    const n = charCount(normalizeText(raw));
    const near = n > limits.max_text * 0.9;
    el.counter.hidden = !near;
    el.counter.textContent = `${n} / ${limits.max_text}`;
    el.counter.classList.toggle('over', n > limits.max_text);
    // Grow with the content up to the CSS max-height (set via CSSOM, allowed by the CSP).
    el.text.style.height = 'auto';
    el.text.style.height = `${el.text.scrollHeight}px`;
  }

  // ---------------------------------------------------------------- banner

  function showBanner(text, code) {
    // Same message again: bump a counter instead of stacking copies.
    for (const item of el.banner.children) {
      if (item.dataset.msg === text) {
        const n = Number(item.dataset.count || '1') + 1;
        item.dataset.count = String(n);
        item.querySelector('.banner-count').textContent = `×${n}`;
        return;
      }
    }
    const item = make('div', 'banner-item');
    item.dataset.msg = text;
    if (code) item.dataset.code = code;
    item.append(make('span', 'banner-text', text), make('span', 'banner-count', ''));
    const close = make('button', 'banner-close', '×');
    close.type = 'button';
    close.title = 'Dismiss';
    close.setAttribute('aria-label', 'Dismiss');
    close.addEventListener('click', () => item.remove());
    item.append(close);
    el.banner.append(item);
    while (el.banner.children.length > 3) el.banner.firstElementChild.remove();
  }

  // ---------------------------------------------------------------- views

  function updateTitle() {
    const base = state.room ? `#${state.room} · Chat` : 'Chat';
    document.title = state.unread ? `(${state.unread}) ${base}` : base;
  }

  function showJoinView(error) {
    if (state.room && state.joined) send({ type: 'leave', room: state.room, ref: nextRef('l') });
    clearTimeout(state.joinRetryTimer);
    state.room = null;
    state.joined = false;
    state.joinRef = null;
    state.lastId = null;
    state.pending.clear();
    clearList();
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

  function enterRoom(name, room) {
    state.name = name;
    state.room = room;
    state.lastId = null;
    state.pending.clear();
    clearList();
    el.joinView.hidden = true;
    el.chatView.hidden = false;
    el.leave.hidden = false;
    el.roomTitle.textContent = `# ${room}`;
    el.whoami.textContent = `as ${name}`;
    updateTitle();
    state.stick = true;
    setPhase('joining');
    if (state.ws && state.ws.readyState === WebSocket.OPEN) sendJoin();
    else if (!state.ws) connect(); // waiting for a retry: go now, the user is waiting
    updateComposer();
    el.text.focus();
  }

  function onJoinSubmit(ev) {
    ev.preventDefault();
    const [name, nameErr] = checkName(el.name.value);
    const [room, roomErr] = checkRoom(el.room.value);
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
    storeSet(STORE_ROOM, room);
    enterRoom(name, room);
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

  el.composer.addEventListener('submit', (ev) => {
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

  el.messages.addEventListener('scroll', () => {
    const m = el.messages;
    state.stick = m.scrollHeight - m.scrollTop - m.clientHeight < STICK_PX;
    if (state.stick) el.jump.hidden = true;
  }, { passive: true });
  el.jump.addEventListener('click', scrollToBottom);
  // Keep the newest message in view when the list gets shorter: phone keyboard opening,
  // the composer growing, a banner appearing.
  new ResizeObserver(() => { if (state.stick) scrollToBottom(); }).observe(el.messages);

  window.addEventListener('online', reconnectNow);
  document.addEventListener('visibilitychange', () => {
    if (document.hidden) return;
    state.unread = 0;
    updateTitle();
    reconnectNow();
  });

  el.name.value = storeGet(STORE_NAME) || '';
  el.room.value = storeGet(STORE_ROOM) || 'lobby';
  (el.name.value ? el.joinButton : el.name).focus();
  connect();
})();
