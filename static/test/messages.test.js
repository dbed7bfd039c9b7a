// Unit tests of messages.js: history's projection taken as is, live edits, deletions and
// reactions applied in place, repeats and actions on deleted messages ignored, and the
// react toggle.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MessageStates, reactFrame, reactionLabel } from '../messages.js';

const msg = (id, user, text, extra = {}) => ({ id, type: 'message', room: 'r', user, text, ...extra });
const act = (id, type, target, user, extra = {}) => ({ id, type, room: 'r', target, user, at: '2026-11-28T15:00:00.000Z', ...extra });

test('history brings messages already projected', () => {
  const states = new MessageStates();
  states.message(msg('m1', 'alice', 'hello, world', {
    edited_at: '2026-11-28T15:04:00.000Z',
    reactions: [{ key: '👍', count: 2, users: ['bob', 'carol'] }],
  }));
  states.message(msg('m2', 'bob', undefined, { deleted: true }));
  assert.deepEqual(states.view('m1', 'bob'), {
    text: 'hello, world',
    editedAt: '2026-11-28T15:04:00.000Z',
    deleted: false,
    reactions: [{ key: '👍', count: 2, users: ['bob', 'carol'], mine: true }],
  });
  assert.equal(states.view('m2', 'bob').deleted, true);
  assert.equal(states.view('m2', 'bob').text, null);
});

test('live edits, reactions and deletions change the message in place, once', () => {
  const states = new MessageStates();
  states.message(msg('m1', 'alice', 'helo'));
  const edit = act('e1', 'edit', 'm1', 'alice', { text: 'hello' });
  assert.equal(states.apply(edit), 'm1');
  assert.equal(states.apply(edit), null, 'a repeat changes nothing');
  assert.equal(states.view('m1', 'x').text, 'hello');
  assert.equal(states.view('m1', 'x').editedAt, edit.at);
  states.apply(act('r1', 'react', 'm1', 'bob', { key: '🎉', op: 'add' }));
  states.apply(act('r2', 'react', 'm1', 'carol', { key: '🎉', op: 'add' }));
  states.apply(act('r3', 'react', 'm1', 'bob', { key: '🎉', op: 'remove' }));
  assert.deepEqual(states.view('m1', 'carol').reactions, [{ key: '🎉', count: 1, users: ['carol'], mine: true }]);
  assert.equal(states.apply(act('d1', 'delete', 'm1', 'alice')), 'm1');
  const gone = states.view('m1', 'carol');
  assert.deepEqual([gone.deleted, gone.text, gone.reactions], [true, null, []]);
  assert.equal(states.apply(act('e2', 'edit', 'm1', 'alice', { text: 'back' })), null);
  assert.equal(states.view('m1', 'carol').text, null, 'nothing acts on a deleted message');
});

test('actions in the same history as their message are already in its projection', () => {
  const states = new MessageStates();
  states.message(msg('m1', 'alice', 'two', { edited_at: 'x' }), 7);
  assert.equal(states.apply(act('e1', 'edit', 'm1', 'alice', { text: 'one' }), 7), null);
  assert.equal(states.view('m1', 'a').text, 'two');
  // A later history (a rejoin with since) brings only what followed: applied.
  assert.equal(states.apply(act('e2', 'edit', 'm1', 'alice', { text: 'three' }), 8), 'm1');
  assert.equal(states.view('m1', 'a').text, 'three');
  assert.equal(states.apply(act('e3', 'edit', 'nope', 'alice', { text: 'x' })), null, 'unknown message');
});

test('the react button toggles the own reaction and says who reacted', () => {
  const states = new MessageStates();
  states.message(msg('m1', 'alice', 'hi', { reactions: [{ key: '👍', count: 1, users: ['bob'] }] }));
  assert.equal(reactFrame('r', 'm1', '👍', states.view('m1', 'bob')).op, 'remove');
  assert.equal(reactFrame('r', 'm1', '👍', states.view('m1', 'carol')).op, 'add');
  assert.equal(reactFrame('r', 'm1', '🎉', states.view('m1', 'bob')).op, 'add');
  assert.equal(reactionLabel(states.view('m1', 'x').reactions[0]), '👍 1: bob');
});
