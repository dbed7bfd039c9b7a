// Unit tests of connection.js with a fake WebSocket and a fake clock: backoff, failover
// across URLs, the connect deadline, and the heartbeat that gives up a silent connection.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CLOSE_DEAD, Connection, backoffDelay } from '../connection.js';

/** Timers that run only when the test moves the clock. */
class Clock {
  constructor() { this.t = 0; this.seq = 0; this.timers = new Map(); }
  now = () => this.t;
  setTimeout = (fn, ms) => { this.seq += 1; this.timers.set(this.seq, { at: this.t + ms, fn }); return this.seq; };
  clearTimeout = (id) => { this.timers.delete(id); };
  /** Moves the clock forward by `ms`, firing due timers in order. */
  advance(ms) {
    const until = this.t + ms;
    for (;;) {
      let next = null;
      for (const [id, tm] of this.timers) if (tm.at <= until && (!next || tm.at < next[1].at)) next = [id, tm];
      if (!next) break;
      this.timers.delete(next[0]);
      this.t = next[1].at;
      next[1].fn();
    }
    this.t = until;
  }
}

/** Records every socket; the test opens, feeds and closes them. */
function fakeWebSocket() {
  const sockets = [];
  class FakeWebSocket extends EventTarget {
    constructor(url) {
      super();
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.closedWith = null;
      sockets.push(this);
    }
    send(data) { this.sent.push(JSON.parse(data)); }
    close(code) { this.closedWith = code ?? 1005; this.readyState = 2; }
    // test side
    open() { this.readyState = 1; this.dispatchEvent(new Event('open')); }
    receive(frame) {
      const ev = new Event('message');
      ev.data = typeof frame === 'string' ? frame : JSON.stringify(frame);
      this.dispatchEvent(ev);
    }
    drop(code = 1006) {
      this.readyState = 3;
      const ev = new Event('close');
      ev.code = code;
      this.dispatchEvent(ev);
    }
  }
  return { FakeWebSocket, sockets };
}

function setup(options = {}, urls = ['ws://a/ws', 'ws://b/ws']) {
  const clock = new Clock();
  const { FakeWebSocket, sockets } = fakeWebSocket();
  const conn = new Connection(urls, {
    WebSocket: FakeWebSocket, setTimeout: clock.setTimeout, clearTimeout: clock.clearTimeout,
    now: clock.now, random: () => 0.5, ...options,
  });
  const seen = [];
  for (const type of ['status', 'open', 'frame', 'close']) {
    conn.addEventListener(type, (ev) => seen.push([type, ev.detail]));
  }
  return { clock, sockets, conn, seen };
}

const last = (seen, type) => seen.filter(([t]) => t === type).at(-1)?.[1];

test('backoff doubles from 0.5 s to 10 s with equal jitter; 1012 retries at once', () => {
  const lo = () => 0;
  const hi = () => 0.999999;
  assert.equal(backoffDelay(0, 1006, lo), 250);
  assert.ok(backoffDelay(0, 1006, hi) < 500);
  assert.equal(backoffDelay(1, 1006, lo), 500);
  assert.equal(backoffDelay(3, 1006, lo), 2000);
  assert.equal(backoffDelay(10, 1006, lo), 5000);
  assert.ok(backoffDelay(10, 1006, hi) < 10000);
  assert.equal(backoffDelay(0, 1012, lo), 50);
  assert.ok(backoffDelay(0, 1012, hi) < 300);
  assert.equal(backoffDelay(1, 1012, lo), 500, 'a 1012 on a failing retry backs off as usual');
});

test('frames arrive parsed; open, send and status follow the socket', () => {
  const { sockets, conn, seen } = setup();
  conn.connect();
  assert.equal(last(seen, 'status').state, 'connecting');
  assert.equal(conn.send({ type: 'join' }), false, 'nothing goes out before open');
  sockets[0].open();
  assert.equal(last(seen, 'status').state, 'connected');
  assert.deepEqual(last(seen, 'open'), { url: 'ws://a/ws' });
  assert.ok(conn.send({ type: 'join', room: 'r' }));
  assert.deepEqual(sockets[0].sent, [{ type: 'join', room: 'r' }]);
  sockets[0].receive({ type: 'hello', gateway: 'gw-1' });
  sockets[0].receive('not json');
  sockets[0].receive('42');
  assert.deepEqual(seen.filter(([t]) => t === 'frame').map(([, d]) => d.frame),
    [{ type: 'hello', gateway: 'gw-1' }]);
});

test('a closed socket reconnects to the next url after the backoff, and hello resets it', () => {
  const { clock, sockets, conn, seen } = setup();
  conn.connect();
  sockets[0].open();
  sockets[0].drop(1006);
  assert.deepEqual(last(seen, 'close'), { code: 1006 });
  const st = last(seen, 'status');
  assert.equal(st.state, 'reconnecting');
  assert.equal(st.retryAt, 375, 'attempt 0: 250 + 0.5 * 250');
  clock.advance(374);
  assert.equal(sockets.length, 1);
  clock.advance(1);
  assert.equal(sockets.length, 2);
  assert.equal(sockets[1].url, 'ws://b/ws');
  sockets[1].drop(1006); // never opened: the second failure waits longer
  assert.equal(last(seen, 'status').retryAt - clock.now(), 750);
  clock.advance(750);
  assert.equal(sockets[2].url, 'ws://a/ws');
  sockets[2].open();
  sockets[2].receive({ type: 'hello' });
  assert.equal(conn.attempt, 0);
});

test('reconnectNow skips the wait, and only while waiting', () => {
  const { sockets, conn } = setup();
  conn.connect();
  conn.reconnectNow();
  assert.equal(sockets.length, 1, 'no second socket while connecting');
  sockets[0].drop();
  conn.reconnectNow();
  assert.equal(sockets.length, 2);
});

test('a socket stuck connecting is given up after the deadline', () => {
  const { clock, sockets, conn, seen } = setup({ connectTimeoutMs: 1000 });
  conn.connect();
  clock.advance(999);
  assert.equal(sockets[0].closedWith, null);
  clock.advance(1);
  assert.equal(sockets[0].closedWith, CLOSE_DEAD);
  assert.equal(last(seen, 'status').state, 'reconnecting');
  sockets[0].drop(1006); // its late close event is ignored
  assert.equal(seen.filter(([t]) => t === 'close').length, 1);
});

test('after silence it pings; an answer keeps the connection', () => {
  const { clock, sockets, conn, seen } = setup({ pingAfterMs: 25000, deadAfterMs: 10000 });
  conn.connect();
  sockets[0].open();
  clock.advance(24999);
  assert.deepEqual(sockets[0].sent, []);
  clock.advance(1);
  assert.deepEqual(sockets[0].sent, [{ type: 'ping', ref: 'ping-1' }]);
  clock.advance(9000);
  sockets[0].receive({ type: 'pong', ref: 'ping-1' });
  clock.advance(20000);
  assert.equal(sockets[0].closedWith, null, 'the pong restarted the silence timer');
  assert.equal(conn.state, 'connected');
  assert.equal(seen.filter(([t]) => t === 'frame').length, 0, 'pongs are not passed on');
});

test('any frame counts as a sign of life, and no ping goes out while frames flow', () => {
  const { clock, sockets, conn } = setup({ pingAfterMs: 1000, deadAfterMs: 500 });
  conn.connect();
  sockets[0].open();
  for (let i = 0; i < 10; i += 1) {
    clock.advance(900);
    sockets[0].receive({ type: 'event', event: {} });
  }
  assert.deepEqual(sockets[0].sent, []);
});

test('no answer to the ping: the socket is given up and the reconnect follows', () => {
  const { clock, sockets, conn, seen } = setup({ pingAfterMs: 25000, deadAfterMs: 10000 });
  conn.connect();
  sockets[0].open();
  clock.advance(25000 + 9999);
  assert.equal(sockets[0].closedWith, null);
  clock.advance(1);
  assert.equal(sockets[0].closedWith, CLOSE_DEAD);
  assert.deepEqual(last(seen, 'close'), { code: CLOSE_DEAD });
  assert.equal(conn.state, 'reconnecting');
  // Late frames and the late close of the abandoned socket are ignored.
  sockets[0].receive({ type: 'event' });
  sockets[0].drop(1006);
  assert.equal(seen.filter(([t]) => t === 'close').length, 1);
  assert.equal(seen.filter(([t]) => t === 'frame').length, 0);
  clock.advance(10000);
  assert.equal(sockets.length, 2, 'reconnected');
  assert.equal(sockets[1].url, 'ws://b/ws');
});

test('an error answer to a ping (a gateway without pings) is a sign of life, not news', () => {
  const { clock, sockets, conn, seen } = setup({ pingAfterMs: 1000, deadAfterMs: 1000 });
  conn.connect();
  sockets[0].open();
  clock.advance(1000);
  sockets[0].receive({ type: 'error', ref: 'ping-1', code: 'unknown_type', message: '' });
  clock.advance(1500);
  assert.equal(sockets[0].closedWith, null);
  assert.equal(seen.filter(([t]) => t === 'frame').length, 0);
  sockets[0].receive({ type: 'error', ref: 'c-1', code: 'unavailable', message: '' });
  assert.equal(seen.filter(([t]) => t === 'frame').length, 1, 'other errors are passed on');
});

test('intervals that are not positive numbers fall back to the defaults', () => {
  const { conn } = setup({ pingAfterMs: NaN, deadAfterMs: 0 });
  assert.equal(conn.opts.pingAfterMs, 25000);
  assert.equal(conn.opts.deadAfterMs, 10000);
});
