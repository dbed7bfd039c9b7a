// Unit tests of presence.js: the member list folded from presence frames (diffs are
// idempotent, counts replace lists), typers that expire on their own, the typing line,
// and when the page sends typing start and stop.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Members, Typers, TypingSignal, typingLine, TYPING_RESEND_MS } from '../presence.js';

const m = (user, name = user, connections = 1) => ({ user, name, connections });

test('presence sets the list and diffs upsert and remove, twice the same as once', () => {
  const members = new Members();
  assert.equal(members.apply({ type: 'presence', room: 'r', members: [m('u1', 'Alice', 2)] }), true);
  const diff = { type: 'presence_diff', room: 'r', joins: [m('u2', 'Bob')], leaves: ['u1'] };
  members.apply(diff);
  members.apply(diff);
  assert.deepEqual(members.sorted(), [{ user: 'u2', name: 'Bob', connections: 1 }]);
  assert.equal(members.online, 1);
  assert.equal(members.apply({ type: 'event' }), false);
});

test('a big room gives a count and no list, and a list again when it shrinks', () => {
  const members = new Members();
  members.apply({ type: 'presence', room: 'r', members: [m('a')] });
  members.apply({ type: 'presence', room: 'r', count: 5000 });
  assert.equal(members.online, 5000);
  assert.deepEqual(members.sorted(), []);
  members.apply({ type: 'presence', room: 'r', members: [m('b'), m('a')] });
  assert.equal(members.online, 2);
  assert.deepEqual(members.sorted().map((x) => x.user), ['a', 'b']);
});

test('malformed members are ignored', () => {
  const members = new Members();
  members.apply({ type: 'presence', room: 'r', members: [null, { user: 1 }, m('ok')] });
  assert.deepEqual(members.sorted().map((x) => x.user), ['ok']);
});

test('typers expire after ttl_ms without any stop, and the own user is not shown', () => {
  const typers = new Typers();
  typers.apply({ type: 'typing', users: ['u1', 'me'], names: ['Alice', 'Me'], ttl_ms: 1000 }, 0);
  assert.deepEqual(typers.names(500, 'me'), ['Alice']);
  assert.deepEqual(typers.names(1000, 'me'), []);
  typers.apply({ type: 'typing', users: [], names: [], ttl_ms: 1000 }, 0);
  assert.deepEqual(typers.names(1, 'me'), []);
});

test('the typing line names one, two or three typers and counts more', () => {
  assert.equal(typingLine([]), '');
  assert.equal(typingLine(['alice']), 'alice is typing…');
  assert.equal(typingLine(['alice', 'bob']), 'alice and bob are typing…');
  assert.equal(typingLine(['a', 'b', 'c']), 'a, b and c are typing…');
  assert.equal(typingLine(['a', 'b', 'c', 'd']), '4 people are typing…');
});

test('a start is sent when typing begins and again only every few seconds; stop once', () => {
  const signal = new TypingSignal();
  assert.equal(signal.input('h', 0), 'start');
  assert.equal(signal.input('he', 100), null);
  assert.equal(signal.input('hel', TYPING_RESEND_MS), 'start');
  assert.equal(signal.input('', TYPING_RESEND_MS + 1), 'stop');
  assert.equal(signal.stop(), null, 'no second stop');
  assert.equal(signal.input('x', TYPING_RESEND_MS + 2), 'start');
  assert.equal(signal.stop(), 'stop');
});
