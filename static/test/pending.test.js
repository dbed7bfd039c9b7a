// Unit tests of pending.js: the states of the user's unconfirmed messages, and the outbox
// that keeps them in storage across reloads.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  FAILED, ID_MAX_AGE_MS, Outbox, QUEUED, REFUSED, SENT, classifyError, explain, retryIsSafe,
  storageKey,
} from '../pending.js';
import { UUIDV7_RE, uuidv7Time } from '../uuid.js';

/** localStorage's interface over a Map. */
class MemoryStorage {
  constructor() { this.map = new Map(); }
  getItem(k) { return this.map.has(k) ? this.map.get(k) : null; }
  setItem(k, v) { this.map.set(k, String(v)); }
  removeItem(k) { this.map.delete(k); }
}

const T0 = Date.UTC(2026, 10, 29, 12, 0, 0);
const outbox = (storage, name = 'alice', room = 'lobby') => new Outbox({
  room, name, storage, now: () => T0,
});
const stored = (storage, room = 'lobby') => JSON.parse(storage.getItem(storageKey(room)) || 'null');

test('a message gets its uuidv7 when it is added, and keeps it in every say', () => {
  const o = outbox(null);
  const e = o.add('hello');
  assert.match(e.id, UUIDV7_RE);
  assert.equal(uuidv7Time(e.id), T0);
  assert.equal(e.status, QUEUED);
  const first = o.transmit(e);
  assert.deepEqual(first, { type: 'say', room: 'lobby', text: 'hello', ref: first.ref, id: e.id });
  assert.equal(e.status, SENT);
  o.errored(first.ref, 'unavailable', 'x');
  o.retry(e.id);
  const second = o.transmit(e);
  assert.equal(second.id, e.id, 'same id on retry');
  assert.notEqual(second.ref, first.ref, 'a fresh ref per transmission');
});

test('errors are classified: retry safely, rejoin, or refused', () => {
  const cases = [
    ['unavailable', 0, 'failed'],
    ['unconfirmed', 0, 'failed'],
    ['conflict', 0, 'refused'],
    ['not_joined', 0, 'rejoin'],
    ['not_joined', 1, 'rejoin'],
    ['not_joined', 2, 'failed'],
    ['invalid_text', 0, 'failed'],
    ['invalid_field', 0, 'failed'],
  ];
  for (const [code, rejoins, want] of cases) {
    assert.equal(classifyError(code, rejoins), want, `${code} after ${rejoins} rejoins`);
  }
  assert.equal(classifyError('invalid_field', 0, ID_MAX_AGE_MS + 1), 'refused', 'an expired id');
  assert.ok(retryIsSafe('unavailable'));
  assert.ok(retryIsSafe('unconfirmed'));
  assert.ok(!retryIsSafe('conflict'));
  assert.match(explain('unconfirmed'), /may have been posted/);
  assert.equal(explain('invalid_text', 'text must be 1 to 4000 characters'),
    'text must be 1 to 4000 characters');
});

test('unavailable makes a failed message that a retry queues again', () => {
  const o = outbox(null);
  const e = o.add('hi');
  const { ref } = o.transmit(e);
  const answer = o.errored(ref, 'unavailable', 'broker down');
  assert.equal(answer.entry, e);
  assert.equal(answer.outcome, 'failed');
  assert.equal(e.status, FAILED);
  assert.equal(e.code, 'unavailable');
  assert.match(e.error, /Not sent/);
  assert.equal(o.retry(e.id), e);
  assert.equal(e.status, QUEUED);
  assert.equal(e.error, null);
  assert.deepEqual(o.queued(), [e]);
});

test('conflict refuses the message for good', () => {
  const o = outbox(null);
  const e = o.add('hi');
  const { ref } = o.transmit(e);
  assert.equal(o.errored(ref, 'conflict', 'taken').outcome, 'refused');
  assert.equal(e.status, REFUSED);
  assert.equal(o.retry(e.id), undefined, 'no retry of a refused message');
  assert.equal(o.discard(e.id), e);
  assert.deepEqual(o.list(), []);
});

test('not_joined queues the message for the rejoin, twice, then fails it', () => {
  const o = outbox(null);
  const e = o.add('hi');
  for (let i = 0; i < 2; i += 1) {
    assert.equal(o.errored(o.transmit(e).ref, 'not_joined', 'join first').outcome, 'rejoin');
    assert.equal(e.status, QUEUED);
  }
  assert.equal(o.errored(o.transmit(e).ref, 'not_joined', 'join first').outcome, 'failed');
  assert.equal(e.status, FAILED);
});

test('answers to refs that are not ours, or not in flight, change nothing', () => {
  const o = outbox(null);
  const e = o.add('hi');
  const { ref } = o.transmit(e);
  assert.equal(o.errored('j-1', 'unavailable', ''), undefined);
  assert.equal(o.errored(undefined, 'rate_limited', ''), undefined);
  o.errored(ref, 'unavailable', '');
  assert.equal(o.errored(ref, 'unavailable', ''), undefined, 'a repeated answer');
  assert.equal(o.confirmed('0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b'), undefined);
});

test('an ack or the own event confirms the message and removes it', () => {
  const storage = new MemoryStorage();
  const o = outbox(storage);
  const a = o.add('one');
  const b = o.add('two');
  o.transmit(a);
  assert.deepEqual(stored(storage).map((s) => s.id), [a.id, b.id]);
  assert.equal(o.confirmed(a.id), a);
  assert.equal(o.confirmed(a.id), undefined, 'only once');
  assert.deepEqual(o.list(), [b]);
  assert.deepEqual(stored(storage).map((s) => s.id), [b.id]);
  o.confirmed(b.id);
  assert.equal(storage.getItem(storageKey('lobby')), null, 'an empty outbox leaves no key');
});

test('a lost connection queues what was in flight, and only that', () => {
  const o = outbox(null);
  const a = o.add('in flight');
  const b = o.add('failed');
  const c = o.add('not sent yet');
  o.transmit(a);
  o.errored(o.transmit(b).ref, 'unconfirmed', '');
  o.connectionLost();
  assert.deepEqual([a.status, b.status, c.status], [QUEUED, FAILED, QUEUED]);
  assert.deepEqual(o.queued(), [a, c]);
});

test('after a reload the pending messages come back queued with their ids, failed ones failed', () => {
  const storage = new MemoryStorage();
  const before = outbox(storage);
  const a = before.add('pending');
  before.transmit(a);
  const b = before.add('failed');
  before.errored(before.transmit(b).ref, 'unavailable', '');
  const c = before.add('refused');
  before.errored(before.transmit(c).ref, 'conflict', '');

  const after = outbox(storage);
  assert.deepEqual(after.list().map((e) => [e.id, e.text, e.status]), [
    [a.id, 'pending', QUEUED],
    [b.id, 'failed', FAILED],
  ]);
  assert.equal(after.get(b.id).code, 'unavailable');
  assert.match(after.get(b.id).error, /Not sent/);
  assert.equal(after.transmit(after.get(a.id)).id, a.id);
});

test('the outbox is per room, and other names keep their messages', () => {
  const storage = new MemoryStorage();
  const alice = outbox(storage, 'alice', 'lobby');
  const mine = alice.add('from alice');
  outbox(storage, 'alice', 'other').add('elsewhere');
  const bob = outbox(storage, 'bob', 'lobby');
  assert.deepEqual(bob.list(), [], 'bob does not resend alice\'s message');
  const his = bob.add('from bob');
  assert.deepEqual(stored(storage).map((s) => s.id).sort(), [mine.id, his.id].sort());
  bob.confirmed(his.id);
  assert.deepEqual(stored(storage).map((s) => s.id), [mine.id], 'alice\'s still stored');
  assert.deepEqual(outbox(storage, 'alice', 'lobby').list().map((e) => e.id), [mine.id]);
  assert.equal(stored(storage, 'other').length, 1);
});

test('garbage in storage is ignored, and a storage that throws does not break sending', () => {
  const storage = new MemoryStorage();
  storage.setItem(storageKey('lobby'), '{not json');
  assert.deepEqual(outbox(storage).list(), []);
  storage.setItem(storageKey('lobby'), JSON.stringify([{ id: 1 }, null, 'x',
    { id: 'a', text: 't', name: 'alice', at: 1 }]));
  assert.deepEqual(outbox(storage).list().map((e) => e.id), ['a']);
  const full = new MemoryStorage();
  full.setItem = () => { throw new Error('QuotaExceededError'); };
  const o = outbox(full);
  const e = o.add('still works');
  assert.equal(o.transmit(e).id, e.id);
});

test('a message restored too late for its id is refused as expired, not retried forever', () => {
  const storage = new MemoryStorage();
  outbox(storage).add('from long ago');
  const late = T0 + ID_MAX_AGE_MS + 60000;
  const o = new Outbox({ room: 'lobby', name: 'alice', storage, now: () => late });
  const [e] = o.list();
  const answer = o.errored(o.transmit(e).ref, 'invalid_field', 'id too old');
  assert.equal(answer.outcome, 'refused');
  assert.equal(e.code, 'expired');
  assert.match(e.error, /can no longer be retried safely/);
  assert.ok(!retryIsSafe(e.code));
  assert.equal(storage.getItem(storageKey('lobby')), null, 'refused messages are not kept');
});
