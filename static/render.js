// render.js — the chat's DOM: message and system lines, day separators, grouping of a
// user's consecutive messages, autoscroll, the look of pending/failed/refused messages, and
// the error banner. User-supplied text only ever reaches the DOM through textContent and
// attribute values, never through HTML parsing. Nothing here talks to the network.

import { REACTION_KEYS, reactionLabel } from './messages.js';

const GROUP_MS = 5 * 60 * 1000; // consecutive messages closer than this are grouped
const STICK_PX = 48; // "at the bottom" tolerance for autoscroll

/** Creates `<tag class=className>` with `text` as its text content. */
export function make(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

const pad2 = (n) => String(n).padStart(2, '0');

/** An event's `at` as a Date; now when it is missing or not a time. */
export function parseTime(at) {
  const d = typeof at === 'string' ? new Date(at) : new Date(NaN);
  return Number.isNaN(d.getTime()) ? new Date() : d;
}

/** The local day of `d`, as a key that is equal for equal days. */
export function dayKey(d) {
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
export function hueClass(user) {
  let h = 0;
  for (const c of user) h = (h * 31 + c.codePointAt(0)) >>> 0;
  return `hue-${h % 10}`;
}

function initial(user) {
  const first = Array.from(user.trim())[0] || '?';
  return first.toUpperCase();
}

/** A chat message: avatar, author, time, text. */
export function buildMessage(user, text, when, own) {
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

/** A join/leave line. */
export function buildSystem(line, when) {
  const node = make('div', 'msg system');
  node.append(make('span', 'text', line), timeElement(when));
  return node;
}

/** Takes the server's time and text into a message already shown (the echo of our own). */
export function adoptEvent(node, ev) {
  const t = node.querySelector('.time');
  if (t && typeof ev.at === 'string') setFullTime(t, parseTime(ev.at));
  const body = node.querySelector('.text');
  if (body && typeof ev.text === 'string') body.textContent = ev.text;
}

// ------------------------------------------------------------------ edits, deletions, reactions

/** A `<button type=button>` with a label, an accessible name and a click handler. */
function button(className, text, label, onClick) {
  const b = make('button', className, text);
  b.type = 'button';
  if (label) {
    b.title = label;
    b.setAttribute('aria-label', label);
  }
  b.addEventListener('click', onClick);
  return b;
}

/**
 * Shows a message as `view` (messages.js) has it: its text, or a tombstone once deleted;
 * "edited" with the time in its title; the reactions as toggle buttons with counts and who
 * reacted; and the tools the user may use: a few reactions, Edit for their own message,
 * Delete for their own (or anyone's when `moderate`). Every tool is a button, so the
 * keyboard reaches them all.
 */
export function showMessageState(node, view, { own, moderate, onReact, onEdit, onDelete }) {
  if (!view) return;
  node.classList.toggle('deleted', view.deleted);
  const body = node.querySelector('.text');
  if (body) body.textContent = view.deleted ? 'This message was deleted' : (view.text ?? '');
  const meta = node.querySelector('.meta');
  let edited = meta?.querySelector('.edited');
  if (view.editedAt && !view.deleted) {
    if (!edited) {
      edited = make('span', 'edited', 'edited');
      meta.append(edited);
    }
    edited.title = `edited ${parseTime(view.editedAt).toLocaleString()}`;
  } else {
    edited?.remove();
  }
  const bubble = node.querySelector('.bubble');
  bubble.querySelector('.reactions')?.remove();
  bubble.querySelector('.tools')?.remove();
  if (view.deleted) {
    closeEditor(node);
    return;
  }
  if (view.reactions.length) {
    const bar = make('div', 'reactions');
    for (const r of view.reactions) {
      const b = button(r.mine ? 'reaction mine' : 'reaction', `${r.key} ${r.count}`,
        reactionLabel(r), () => onReact(r.key));
      b.setAttribute('aria-pressed', String(r.mine));
      bar.append(b);
    }
    bubble.append(bar);
  }
  const tools = make('div', 'tools');
  for (const key of REACTION_KEYS) {
    tools.append(button('tool react', key, `React with ${key}`, () => onReact(key)));
  }
  if (own) tools.append(button('tool edit', 'Edit', 'Edit this message', onEdit));
  if (own || moderate) tools.append(button('tool delete', 'Delete', 'Delete this message', onDelete));
  bubble.append(tools);
}

/**
 * Replaces a message's text by an editor (Enter saves, Shift+Enter a new line, Escape
 * cancels) with Save and Cancel buttons; focus goes to the text.
 */
export function openEditor(node, text, { onSave, onCancel }) {
  closeEditor(node);
  const body = node.querySelector('.text');
  const box = make('div', 'edit-box');
  const editor = make('textarea', 'editor');
  editor.value = text ?? '';
  editor.rows = 2;
  editor.setAttribute('aria-label', 'Edit your message');
  const save = () => onSave(editor.value);
  editor.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      save();
    } else if (e.key === 'Escape') {
      e.preventDefault();
      onCancel();
    }
  });
  box.append(editor, button('link save', 'Save', 'Save the edit', save),
    button('link cancel', 'Cancel', 'Keep the message as it is', onCancel));
  if (body) body.hidden = true;
  body?.after(box);
  editor.focus();
}

/** Takes the editor away and shows the text again. */
export function closeEditor(node) {
  node.querySelector('.edit-box')?.remove();
  const body = node.querySelector('.text');
  if (body) body.hidden = false;
}

/** Asks, in place of the tools, whether to delete the message for everyone. */
export function confirmDelete(node, { onConfirm, onCancel }) {
  const tools = node.querySelector('.tools');
  if (!tools) return;
  const ask = make('div', 'tools confirm');
  ask.append(make('span', 'confirm-text', 'Delete this message for everyone?'),
    button('tool really-delete', 'Delete', 'Delete it for everyone', onConfirm),
    button('tool keep', 'Keep', 'Keep the message', onCancel));
  tools.replaceWith(ask);
  ask.querySelector('.really-delete').focus();
}

// ------------------------------------------------------------------ own message states

function clearState(node) {
  node.classList.remove('pending', 'failed', 'refused');
  node.querySelector('.clock')?.remove();
  node.querySelector('.error')?.remove();
}

/** Greyed with a small clock: sent or about to be, not confirmed yet. */
export function showPending(node) {
  clearState(node);
  node.classList.add('pending');
  const clock = make('span', 'clock');
  clock.title = 'Sending…';
  clock.setAttribute('role', 'img');
  clock.setAttribute('aria-label', 'sending');
  node.querySelector('.meta').append(clock);
}

/** Confirmed by the server: an ordinary message with its event id. */
export function showConfirmed(node, id) {
  clearState(node);
  if (id) node.dataset.id = id;
}

/**
 * Failed (with Retry when `onRetry` is given) or refused: the reason, and what the user
 * can do. `safe` adds that a retry cannot post the message twice.
 */
export function showFailed(node, { reason, safe, refused, onRetry, onDiscard }) {
  clearState(node);
  node.classList.add('failed');
  if (refused) node.classList.add('refused');
  const box = make('div', 'error');
  box.append(make('span', 'error-icon', '!'), make('span', 'error-text', reason));
  if (onRetry) {
    if (safe) box.append(make('span', 'error-safe', 'Retrying is safe: it will not be posted twice.'));
    const retry = make('button', 'link retry', 'Retry');
    retry.type = 'button';
    retry.title = safe ? 'Send it again; it cannot appear twice' : 'Send it again';
    retry.addEventListener('click', onRetry);
    box.append(retry);
  }
  const discard = make('button', 'link discard', 'Discard');
  discard.type = 'button';
  discard.addEventListener('click', onDiscard);
  box.append(discard);
  node.querySelector('.bubble').append(box);
}

// ------------------------------------------------------------------ the list

/**
 * The message list (#messages) and its "new messages" button: day separators, grouping,
 * autoscroll while the reader is at the bottom, the map of shown events by id.
 */
export class MessageList {
  constructor(list, jump) {
    this.el = list;
    this.jump = jump;
    /** event id -> rendered element */
    this.byId = new Map();
    /** {day, user, ts} of the last appended item, for grouping */
    this.tail = null;
    /** autoscroll while the user is at the bottom */
    this.stick = true;

    list.addEventListener('scroll', () => {
      this.stick = list.scrollHeight - list.scrollTop - list.clientHeight < STICK_PX;
      if (this.stick) jump.hidden = true;
    }, { passive: true });
    jump.addEventListener('click', () => this.scrollToBottom());
    // Keep the newest message in view when the list gets shorter: phone keyboard opening,
    // the composer growing, a banner appearing.
    new ResizeObserver(() => { if (this.stick) this.scrollToBottom(); }).observe(list);
  }

  /** Whether the list shows no message or system line. */
  get isEmpty() {
    return !this.el.querySelector('.msg');
  }

  /**
   * Appends an item, with a day separator when the day changes and the `grouped` class
   * when it continues the previous author's run of messages (`user` null: never grouped).
   */
  append(node, when, user, live) {
    const day = dayKey(when);
    if (!this.tail || this.tail.day !== day) {
      const sep = make('div', 'day-sep');
      sep.append(make('span', '', dayLabel(when)));
      this.el.append(sep);
    }
    const t = when.getTime();
    const cont = user !== null && this.tail && this.tail.user === user
      && this.tail.day === day && t - this.tail.ts < GROUP_MS;
    node.classList.toggle('grouped', !!cont);
    this.tail = { day, user, ts: t };
    this.el.append(node);
    this.setPhase('');
    if (this.stick) {
      this.scrollToBottom();
    } else if (live) {
      this.jump.hidden = false;
    }
  }

  /** Registers a shown event under its id (for duplicates and echoes). */
  remember(id, node) {
    node.dataset.id = id;
    this.byId.set(id, node);
  }

  clear() {
    this.el.replaceChildren();
    this.byId.clear();
    this.tail = null;
  }

  /** '' | 'joining' | 'empty' — drives a placeholder drawn by CSS in the empty list. */
  setPhase(phase) {
    if (phase) this.el.dataset.phase = phase;
    else delete this.el.dataset.phase;
  }

  scrollToBottom() {
    this.el.scrollTop = this.el.scrollHeight;
    this.stick = true;
    this.jump.hidden = true;
  }
}

// ------------------------------------------------------------------ banner

/** Shows an error in the banner; the same text again bumps a counter instead of stacking. */
export function showBanner(banner, text, code) {
  for (const item of banner.children) {
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
  banner.append(item);
  while (banner.children.length > 3) banner.firstElementChild.remove();
}
