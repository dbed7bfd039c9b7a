// messages.js — what edits, deletions and reactions make of the messages the page shows:
// each message's current text, whether and when it was edited, whether it was deleted, and
// its reactions with who reacted. History brings messages already projected by the archive
// (`edited_at`, `deleted`, `reactions`); live `edit`, `delete` and `react` events then change
// them in place. Applying an event twice changes nothing. Pure state, no DOM: the node tests
// in static/test/messages.test.js cover it.

/** The reactions the page offers (any short emoji is accepted from others). */
export const REACTION_KEYS = ['👍', '❤️', '😂', '🎉'];

/** The event types that act on a message. */
export const ACTIONS = new Set(['edit', 'delete', 'react']);

export class MessageStates {
  constructor() {
    /** message id -> {user, guest, text, editedAt, deleted, reactions: Map<key, string[]>, batch} */
    this.byId = new Map();
    /** ids of the actions applied, so a repeat changes nothing */
    this.applied = new Set();
  }

  clear() {
    this.byId.clear();
    this.applied.clear();
  }

  /**
   * Takes a message event (from history, with the archive's projection, or live).
   * `batch` names the history it came in: that history's own actions are already in the
   * projection and are not applied again (see `apply`).
   */
  message(ev, batch = null) {
    const reactions = new Map();
    for (const r of Array.isArray(ev.reactions) ? ev.reactions : []) {
      if (typeof r?.key === 'string' && Array.isArray(r.users)) {
        reactions.set(r.key, r.users.filter((u) => typeof u === 'string'));
      }
    }
    const state = {
      user: ev.user,
      guest: ev.guest === true,
      text: ev.deleted === true ? null : (typeof ev.text === 'string' ? ev.text : null),
      editedAt: typeof ev.edited_at === 'string' ? ev.edited_at : null,
      deleted: ev.deleted === true,
      reactions,
      batch,
    };
    this.byId.set(ev.id, state);
    return state;
  }

  /**
   * Applies an `edit`, `delete` or `react` event; returns the id of the message it changed
   * (to draw again), or null when it changed nothing: a repeat, an unknown message, an
   * action on a deleted message, or an action that came in the same history as its
   * (already projected) message.
   */
  apply(ev, batch = null) {
    if (!ev || !ACTIONS.has(ev.type) || typeof ev.target !== 'string') return null;
    if (this.applied.has(ev.id)) return null;
    const state = this.byId.get(ev.target);
    if (!state) return null;
    this.applied.add(ev.id);
    if (batch !== null && state.batch === batch) return null;
    if (state.deleted) return null;
    switch (ev.type) {
      case 'edit':
        if (typeof ev.text !== 'string') return null;
        state.text = ev.text;
        state.editedAt = typeof ev.at === 'string' ? ev.at : state.editedAt;
        break;
      case 'delete':
        state.deleted = true;
        state.text = null;
        state.editedAt = null;
        state.reactions.clear();
        break;
      case 'react': {
        if (typeof ev.key !== 'string') return null;
        const users = state.reactions.get(ev.key) || [];
        if (ev.op === 'add' && !users.includes(ev.user)) {
          state.reactions.set(ev.key, [...users, ev.user]);
        } else if (ev.op === 'remove' && users.includes(ev.user)) {
          const rest = users.filter((u) => u !== ev.user);
          if (rest.length) state.reactions.set(ev.key, rest);
          else state.reactions.delete(ev.key);
        } else {
          return null;
        }
        break;
      }
      default:
        return null;
    }
    return ev.target;
  }

  /**
   * How to show message `id` to `self` (the page's user id or guest name): its text (null
   * once deleted), edit time, and reactions with counts, who reacted and whether `self` did.
   */
  view(id, self) {
    const state = this.byId.get(id);
    if (!state) return null;
    return {
      text: state.text,
      editedAt: state.editedAt,
      deleted: state.deleted,
      reactions: [...state.reactions].map(([key, users]) => ({
        key, count: users.length, users: [...users], mine: users.includes(self),
      })),
    };
  }
}

/** The frame that toggles `self`'s reaction `key` on a message shown as `view`. */
export function reactFrame(room, id, key, view) {
  const mine = view?.reactions.some((r) => r.key === key && r.mine);
  return { type: 'react', room, target: id, key, op: mine ? 'remove' : 'add' };
}

/** "👍 2: alice, bob" — the accessible label of a reaction button. */
export function reactionLabel(reaction) {
  const who = reaction.users.join(', ');
  return `${reaction.key} ${reaction.count}${who ? `: ${who}` : ''}`;
}
