// connection.js — the page's websocket to a gateway, kept open: reconnect with exponential
// backoff and jitter, failover across several gateway URLs, a deadline for connecting, and
// a heartbeat that notices a connection the network dropped silently. No DOM: it is an
// EventTarget, and the page listens to it.
//
// Events:
//   'status' {state, url, retryAt}  state: 'connecting' | 'connected' | 'reconnecting'
//   'open'   {url}                  the socket is open (send `join`s now)
//   'frame'  {frame}                a JSON object from the server (pongs are kept here)
//   'close'  {code}                 the socket is gone; a reconnect is already scheduled
//
// Browsers neither send websocket pings nor tell the page about the server's, so the
// heartbeat is in the protocol: after `pingAfterMs` without any frame from the server it
// sends `{"type":"ping"}`, which the gateway answers with a `pong`; when still nothing has
// come `deadAfterMs` later, the socket is given up (CLOSE_DEAD) and the usual reconnect
// follows.

/** Close code of a socket given up by the heartbeat (4000-4999 are the application's). */
export const CLOSE_DEAD = 4000;
/** Close code the gateway sends when it shuts down: another gateway is ready very soon. */
export const CLOSE_SERVICE_RESTART = 1012;

const DEFAULTS = {
  backoffMinMs: 500,
  backoffMaxMs: 10000,
  connectTimeoutMs: 10000,
  pingAfterMs: 25000,
  deadAfterMs: 10000,
};

const CONNECTING = 0;
const OPEN = 1;

/**
 * The reconnect delay after `attempt` consecutive failures: 0.5 s doubling to 10 s with
 * "equal jitter" (half fixed, half random). After a 1012 on a connection that worked, a
 * short 50-300 ms: the gateway is restarting and another one is ready.
 */
export function backoffDelay(attempt, code, random = Math.random, opts = DEFAULTS) {
  if (code === CLOSE_SERVICE_RESTART && attempt === 0) return 50 + random() * 250;
  const base = Math.min(opts.backoffMaxMs, opts.backoffMinMs * 2 ** attempt);
  return base / 2 + random() * (base / 2);
}

export class Connection extends EventTarget {
  /**
   * @param {string[]} urls websocket URLs, tried in turn (the next one after each failure)
   * @param {object} [options] backoff/heartbeat settings (see DEFAULTS) and, for tests,
   *   `WebSocket`, `setTimeout`, `clearTimeout` and `random`
   */
  constructor(urls, options = {}) {
    super();
    if (!urls.length) throw new Error('no gateway URL');
    this.urls = urls;
    this.opts = { ...DEFAULTS };
    for (const k of Object.keys(DEFAULTS)) {
      if (Number.isFinite(options[k]) && options[k] > 0) this.opts[k] = options[k];
    }
    this.WebSocket = options.WebSocket || globalThis.WebSocket;
    this.setTimeout = options.setTimeout || globalThis.setTimeout.bind(globalThis);
    this.clearTimeout = options.clearTimeout || globalThis.clearTimeout.bind(globalThis);
    this.random = options.random || Math.random;
    this.now = options.now || Date.now;

    /** Index in `urls` of the current (or next) gateway. */
    this.urlIndex = 0;
    /** 'idle' | 'connecting' | 'connected' | 'reconnecting' */
    this.state = 'idle';
    /** Consecutive connections that failed before a `hello`: drives the backoff. */
    this.attempt = 0;
    this.ws = null;
    this.pingSeq = 0;
    this.timers = { retry: 0, connect: 0, ping: 0, dead: 0 };
  }

  /** The URL of the current (or next) gateway. */
  get url() {
    return this.urls[this.urlIndex];
  }

  /** Whether frames can be sent now. */
  get isOpen() {
    return !!this.ws && this.ws.readyState === OPEN;
  }

  /** Connects now, dropping any wait for a retry. */
  connect() {
    this.clear('retry');
    this.clear('connect');
    const url = this.url;
    this.setState('connecting');
    let ws;
    try {
      ws = new this.WebSocket(url);
    } catch (err) {
      // A malformed URL in ?gw=: count it as a failed connection and try the next one.
      console.warn('cannot open websocket', url, err);
      this.scheduleReconnect(0);
      return;
    }
    this.ws = ws;
    // A socket stuck in CONNECTING (packets dropped) would never fire close on its own.
    this.timers.connect = this.setTimeout(() => {
      if (ws === this.ws && ws.readyState === CONNECTING) this.giveUp(ws, CLOSE_DEAD);
    }, this.opts.connectTimeoutMs);

    ws.addEventListener('open', () => {
      if (ws !== this.ws) return;
      this.clear('connect');
      this.setState('connected');
      this.armHeartbeat();
      this.emit('open', { url });
    });
    ws.addEventListener('message', (ev) => {
      if (ws !== this.ws) return;
      this.armHeartbeat(); // any frame proves the connection alive
      if (typeof ev.data !== 'string') return;
      let frame;
      try {
        frame = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (!frame || typeof frame !== 'object' || this.isHeartbeatAnswer(frame)) return;
      if (frame.type === 'hello') this.attempt = 0; // a gateway that talks resets the backoff
      this.emit('frame', { frame });
    });
    ws.addEventListener('close', (ev) => {
      if (ws !== this.ws) return;
      this.closed(ev.code);
    });
    // 'error' is always followed by 'close', which does the work.
  }

  /** Sends a frame (an object, sent as JSON); false when the socket is not open. */
  send(frame) {
    if (!this.isOpen) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  /** Skips the rest of a backoff wait (user action, network back, tab visible again). */
  reconnectNow() {
    if (this.state === 'reconnecting') this.connect();
  }

  // ------------------------------------------------------------------ internals

  emit(type, detail) {
    const ev = new Event(type);
    ev.detail = detail;
    this.dispatchEvent(ev);
  }

  setState(state, retryAt = 0) {
    this.state = state;
    this.emit('status', { state, url: this.url, retryAt });
  }

  clear(name) {
    if (this.timers[name]) this.clearTimeout(this.timers[name]);
    this.timers[name] = 0;
  }

  /** (Re)starts the silence timer: a ping after `pingAfterMs`, then the deadline. */
  armHeartbeat() {
    this.clear('ping');
    this.clear('dead');
    const ws = this.ws;
    this.timers.ping = this.setTimeout(() => {
      if (ws !== this.ws) return;
      this.pingSeq += 1;
      this.send({ type: 'ping', ref: `ping-${this.pingSeq}` });
      this.timers.dead = this.setTimeout(() => {
        if (ws === this.ws) this.giveUp(ws, CLOSE_DEAD);
      }, this.opts.deadAfterMs);
    }, this.opts.pingAfterMs);
  }

  /**
   * A `pong`, or an error about our ping (a gateway that predates pings answers
   * `unknown_type`): proof of life that is nobody else's business.
   */
  isHeartbeatAnswer(frame) {
    if (frame.type === 'pong') return true;
    return frame.type === 'error' && typeof frame.ref === 'string' && frame.ref.startsWith('ping-');
  }

  /**
   * Abandons a socket without waiting for its close handshake, which on a dead network
   * only ends with the browser's own timeout, and reconnects.
   */
  giveUp(ws, code) {
    this.ws = null; // its late events are ignored from now on
    try {
      ws.close(code, 'no answer from the server');
    } catch { /* already closing */ }
    this.closed(code);
  }

  closed(code) {
    this.ws = null;
    this.clear('connect');
    this.clear('ping');
    this.clear('dead');
    this.scheduleReconnect(code);
    this.emit('close', { code });
  }

  /** Waits out the backoff, then connects to the next URL. */
  scheduleReconnect(code) {
    const delay = backoffDelay(this.attempt, code, this.random, this.opts);
    this.attempt += 1;
    this.urlIndex = (this.urlIndex + 1) % this.urls.length;
    this.clear('retry');
    this.timers.retry = this.setTimeout(() => this.connect(), delay);
    this.setState('reconnecting', this.now() + delay);
  }
}
