#!/usr/bin/env python3
"""pyprinter: a minimal side subscriber of the chat's event stream.

It binds its own durable queue `<prefix>.pyprinter` to the fanout exchange
`<prefix>.events`, prints every event as one line and acks it after printing.
Anything that is not a valid v1 event is rejected without requeue, so the broker
dead-letters it to `<prefix>.dead` (via `<prefix>.dlx`) instead of redelivering it
forever. See docs/topology.md for the contract this follows.

With --from first|<RFC 3339 time>|<offset> it reads the event log stream
`<prefix>.log` instead (no queue of its own): the past from that point, then live,
storing the offset of each event it printed in --offset-file, from which a later run
goes on (the stored offset wins over --from; delete the file to start over).

Settings (environment):
    AMQP_URL     default amqp://guest:guest@127.0.0.1:5672/%2f
    CHAT_PREFIX  default chat
"""

import argparse
import collections
import json
import os
import re
import signal
import sys
import time
import unicodedata
from datetime import datetime, timedelta, timezone

import pika
from pika.exceptions import AMQPConnectionError, ChannelClosedByBroker

NAME = "pyprinter"  # the queue is <prefix>.<NAME>; pick your own for a new subscriber
PREFETCH = 50
# Reading the event log stream (docs/topology.md, "Catching up"), as chat_core::replay does:
TIME_MARGIN = timedelta(seconds=10)  # attach this much before a start time, skip the rest
DEDUPE_WINDOW = 65536  # ids remembered to drop a copy a gateway published again
WARM_UP = DEDUPE_WINDOW  # entries before a stored offset read again to remember their ids

# --- The event schema (docs/protocol.md), checked as strictly as the Rust consumers do.

MAX_NAME = 128  # consumer bounds (chat-core/src/event.rs decode_limits)
MAX_TEXT = 64 * 1024
PREFIX_RE = re.compile(r"[A-Za-z0-9_.-]{1,100}")
ROOM_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
TOKEN_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
RFC3339_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]+))?(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))"
)


class InvalidEvent(Exception):
    """The delivery is not a valid v1 event."""


def forbidden(c):
    """Control, line-separator and bidi-control characters (chat-core/src/normalize.rs)."""
    o = ord(c)
    return (
        unicodedata.category(c) == "Cc"
        or o in (0x2028, 0x2029, 0x200E, 0x200F, 0x061C)
        or 0x202A <= o <= 0x202E
        or 0x2066 <= o <= 0x2069
    )


def no_duplicate_keys(pairs):
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise InvalidEvent("duplicate field")
    return dict(pairs)


def string(event, key):
    value = event.get(key)
    if not isinstance(value, str):
        raise InvalidEvent("%s must be a string" % key)
    try:
        value.encode("utf-8")  # JSON may smuggle lone surrogates; Rust refuses them
    except UnicodeEncodeError:
        raise InvalidEvent("%s is not valid Unicode" % key)
    return value


def parse_at(raw):
    m = RFC3339_RE.fullmatch(raw)
    if not m:
        raise InvalidEvent("at must be an RFC 3339 time")
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    micros = int((m.group(7) or "0")[:6].ljust(6, "0"))
    try:
        at = datetime(year, month, day, hour, minute, min(second, 59), micros, timezone.utc)
    except ValueError:
        raise InvalidEvent("at must be an RFC 3339 time")
    if m.group(9):
        offset = timedelta(hours=int(m.group(10)), minutes=int(m.group(11)))
        at -= offset if m.group(9) == "+" else -offset
    return at


# The fields each event type requires, and those it may carry; every other field of
# KIND_FIELDS is refused (chat_core::event::EventKind::need).
REQUIRED = {
    "message": ("text",),
    "join": (),
    "leave": (),
    "room_created": ("visibility",),
    "member_added": ("member",),
    "member_removed": ("member",),
    "edit": ("target", "text"),
    "delete": ("target",),
    "react": ("target", "key", "op"),
    "role_granted": ("member", "role"),
    "role_revoked": ("member", "role"),
}
OPTIONAL = {"delete": ("reason",)}
KIND_FIELDS = ("text", "visibility", "member", "target", "reason", "key", "op", "role")
# Fields only history adds to messages (the projection); never on the exchange.
HISTORY_FIELDS = ("edited_at", "deleted", "reactions")
MAX_REASON = 200
MAX_KEY_BYTES = 32
MAX_KEY_CHARS = 8


def normal_text(text, limit):
    return (
        bool(text.strip())
        and len(text) <= limit
        and text == unicodedata.normalize("NFC", text)
        and not any(c != "\n" and (c == "\t" or forbidden(c)) for c in text)
    )


def reaction_key(key):
    """Whether a reaction key is one short emoji (chat_core::normalize::reaction_key)."""
    return (
        0 < len(key) <= MAX_KEY_CHARS
        and len(key.encode("utf-8")) <= MAX_KEY_BYTES
        and not key.isascii()
        and not any(c.isspace() or forbidden(c) for c in key)
        and key == unicodedata.normalize("NFC", key)
    )


def normal_name(s):
    """Whether a name or user id is already normalised, as the gateways make them."""
    return bool(s) and len(s) <= MAX_NAME and s == unicodedata.normalize("NFC", s).strip() and not any(
        forbidden(c) for c in s
    )


def decode(body):
    """Parses and validates one delivery; raises InvalidEvent. Mirrors Event::decode."""
    try:
        event = json.loads(body.decode("utf-8"), object_pairs_hook=no_duplicate_keys)
    except (UnicodeDecodeError, ValueError) as err:
        raise InvalidEvent("not a JSON event: %s" % err)
    if not isinstance(event, dict):
        raise InvalidEvent("not a JSON object")
    v = event.get("v")
    if type(v) is not int or v not in (1, 2):  # `type(...) is int` also refuses true/false
        raise InvalidEvent("unsupported schema version %r" % (v,))
    if not TOKEN_RE.fullmatch(string(event, "id")):
        raise InvalidEvent("invalid event id")
    if not TOKEN_RE.fullmatch(string(event, "gateway")):
        raise InvalidEvent("invalid gateway id")
    kind = string(event, "type")
    if kind not in REQUIRED:
        raise InvalidEvent("unknown type %r" % kind)
    if v == 1:
        # Made before identities: nobody vouched for the name. Upgraded like Event::decode.
        if kind not in ("message", "join", "leave"):
            raise InvalidEvent("a version 1 event cannot be a %s event" % kind)
        event["v"], event["guest"] = 2, True
    if event.get("guest", False) not in (True, False):
        raise InvalidEvent("guest must be a boolean")
    if not ROOM_RE.fullmatch(string(event, "room")):
        raise InvalidEvent("invalid room")
    user = string(event, "user")
    if (
        not user
        or len(user) > MAX_NAME
        or user != unicodedata.normalize("NFC", user).strip()
        or any(forbidden(c) for c in user)
    ):
        raise InvalidEvent("invalid or unnormalised user")
    for key in ("name", "member"):
        if event.get(key) is not None and not normal_name(string(event, key)):
            raise InvalidEvent("invalid or unnormalised %s" % key)
    for field in HISTORY_FIELDS:
        if field in event and event[field] not in (None, False, []):
            raise InvalidEvent("%s is a field of history, not of an event" % field)
    # Each type carries exactly its own fields.
    for field in KIND_FIELDS:
        present = event.get(field) is not None
        if field in REQUIRED[kind] and not present:
            raise InvalidEvent("a %s event must carry %s" % (kind, field))
        if field not in REQUIRED[kind] + OPTIONAL.get(kind, ()) and present:
            raise InvalidEvent("a %s event must not carry %s" % (kind, field))
    if event.get("text") is not None and not normal_text(string(event, "text"), MAX_TEXT):
        raise InvalidEvent("invalid or unnormalised text")
    if event.get("reason") is not None and not normal_text(string(event, "reason"), MAX_REASON):
        raise InvalidEvent("invalid or unnormalised reason")
    if event.get("target") is not None and not TOKEN_RE.fullmatch(string(event, "target")):
        raise InvalidEvent("invalid target id")
    if event.get("key") is not None and not reaction_key(string(event, "key")):
        raise InvalidEvent("a reaction key must be one short emoji")
    if event.get("op") is not None and string(event, "op") not in ("add", "remove"):
        raise InvalidEvent("op must be add or remove")
    if event.get("role") is not None and string(event, "role") != "moderator":
        raise InvalidEvent("role must be moderator")
    if kind == "room_created" and event["visibility"] not in ("public", "private"):
        raise InvalidEvent("visibility must be public or private")
    event["at"] = parse_at(string(event, "at"))
    return event


# --- Output: one event, one line.


def escape(s):
    """Escapes backslashes, line breaks and control characters, so one event is one line."""
    out = []
    for c in s:
        if c == "\\":
            out.append("\\\\")
        elif c == "\n":
            out.append("\\n")
        elif unicodedata.category(c) == "Cc" or c in "\u2028\u2029":
            out.append("\\u{%x}" % ord(c))
        else:
            out.append(c)
    return "".join(out)


def line(event):
    at = event["at"].strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (event["at"].microsecond // 1000)
    head = "%s #%s " % (at, event["room"])
    # A guest's self-chosen name is marked with "~", as in the chat log.
    who = ("~" if event.get("guest") else "") + escape(event["user"])
    kind = event["type"]
    if kind == "message":
        return head + "%s: %s" % (who, escape(event["text"]))
    if kind == "room_created":
        return head + "* %s created the room (%s)" % (who, event["visibility"])
    if kind in ("member_added", "member_removed"):
        verb = "added" if kind == "member_added" else "removed"
        return head + "* %s %s %s" % (who, verb, escape(event["member"]))
    if kind == "edit":
        return head + "* %s edited %s: %s" % (who, event["target"], escape(event["text"]))
    if kind == "delete":
        reason = " (%s)" % escape(event["reason"]) if event.get("reason") else ""
        return head + "* %s deleted %s%s" % (who, event["target"], reason)
    if kind == "react":
        if event["op"] == "add":
            return head + "* %s reacted %s to %s" % (who, event["key"], event["target"])
        return head + "* %s took back %s from %s" % (who, event["key"], event["target"])
    if kind == "role_granted":
        return head + "* %s made %s a %s" % (who, escape(event["member"]), event["role"])
    if kind == "role_revoked":
        return head + "* %s took %s from %s" % (who, event["role"], escape(event["member"]))
    return head + "* %s %s" % (who, "joined" if kind == "join" else "left")


# --- The broker side.


def subscriber_queue_arguments(dlx):
    """A quorum queue (replicated over a cluster's nodes) that dead-letters, at least once,
    what its consumer rejects or what was delivered 20 times (chat-core's DELIVERY_LIMIT)."""
    return {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": dlx,
        "x-delivery-limit": 20,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def declare(channel, prefix):
    """Declares exactly what chat-core/src/topology.rs declares for a side subscriber
    (declare_base + declare_subscriber_queue), so start-up order does not matter. The
    flags and arguments must match the other services' or the broker refuses them."""
    events, dlx, dead = prefix + ".events", prefix + ".dlx", prefix + ".dead"
    channel.exchange_declare(exchange=events, exchange_type="fanout", durable=True)
    channel.exchange_declare(exchange=dlx, exchange_type="fanout", durable=True)
    channel.queue_declare(queue=dead, durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_bind(queue=dead, exchange=dlx, routing_key="")
    queue = "%s.%s" % (prefix, NAME)
    channel.queue_declare(queue=queue, durable=True, arguments=subscriber_queue_arguments(dlx))
    channel.queue_bind(queue=queue, exchange=events, routing_key="")
    return queue


def on_message(channel, method, properties, body):
    try:
        event = decode(body)
    except InvalidEvent as err:
        print(
            "pyprinter: dead-lettering message_id=%s: %s" % (properties.message_id, err),
            file=sys.stderr,
            flush=True,
        )
        channel.basic_reject(delivery_tag=method.delivery_tag, requeue=False)
        return
    print(line(event), flush=True)
    # Acked only after printing: a crash before this line means redelivery (at-least-once),
    # so the same event may be printed twice; dedupe by event id if that matters to you.
    channel.basic_ack(delivery_tag=method.delivery_tag)


def parse_start(raw):
    """--from: "first", an offset (a whole number) or an RFC 3339 time."""
    if raw == "first":
        return "first"
    if raw.isdigit() and raw.isascii():
        return int(raw)
    try:
        return parse_at(raw)
    except InvalidEvent:
        raise argparse.ArgumentTypeError(
            "must be first, an RFC 3339 time (2026-11-30T12:00:00Z) or an offset, got %r" % raw
        )


class OffsetFile:
    """The offset of the last event handled, kept in a file: AMQP 0.9.1 keeps none for a
    stream's reader. Written whole (a temporary file renamed over it), after printing."""

    def __init__(self, path):
        self.path = path

    def load(self):
        try:
            with open(self.path) as f:
                raw = f.read().strip()
        except FileNotFoundError:
            return None
        if not (raw.isdigit() and raw.isascii()):
            raise SystemExit("pyprinter: %s does not hold an offset (%r); delete it to start over" % (self.path, raw))
        return int(raw)

    def store(self, offset):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % offset)
        os.replace(tmp, self.path)


class LogReader:
    """Reads <prefix>.log from a start and then live; hands on each event once, in order."""

    def __init__(self, start, offsets):
        stored = offsets.load()
        self.offsets = offsets
        self.not_before = None
        if stored is not None:
            self.expected = stored + 1  # the first offset to print
            self.attach = max(0, self.expected - WARM_UP)  # read again only to remember ids
            print("pyprinter: resuming after offset %d (stored in %s)" % (stored, offsets.path), file=sys.stderr)
        elif start == "first":
            self.expected, self.attach = 0, "first"
        elif isinstance(start, int):
            self.expected, self.attach = start, max(0, start - WARM_UP)
        else:
            self.expected, self.attach = 0, start - TIME_MARGIN  # pika sends a datetime as a timestamp
            self.not_before = start
        self.seen = collections.OrderedDict()
        self.handled = False  # whether any entry from `expected` on was handled yet

    def remember(self, event_id):
        """Records an id; False if it was seen within the window (a copy)."""
        if event_id in self.seen:
            return False
        self.seen[event_id] = None
        if len(self.seen) > DEDUPE_WINDOW:
            self.seen.popitem(last=False)
        return True

    def on_message(self, channel, method, properties, body):
        offset = (properties.headers or {}).get("x-stream-offset")
        if not isinstance(offset, int):
            raise SystemExit("pyprinter: a delivery without x-stream-offset: is <prefix>.log a stream?")
        try:
            event = decode(body)
        except InvalidEvent as err:
            # A stream cannot dead-letter: skip it, say so.
            event = None
            print("pyprinter: skipping log entry %d: %s" % (offset, err), file=sys.stderr, flush=True)
        fresh = event is not None and self.remember(event["id"])
        if offset >= self.expected:
            if fresh and self.before_start(event):
                fresh = False
            if fresh:
                print(line(event), flush=True)
            # Stored after printing: a crash in between prints the event again once.
            self.offsets.store(offset)
            self.expected = offset + 1
            self.handled = True
        # A stream's ack only gives credit for the next delivery.
        channel.basic_ack(delivery_tag=method.delivery_tag)

    def before_start(self, event):
        """For a start at a time: whether the event was stamped before it. Once an event
        stamped TIME_MARGIN after it came, the reader is past it by every clock."""
        if self.not_before is None:
            return False
        if event["at"] >= self.not_before + TIME_MARGIN:
            self.not_before = None
            return False
        return event["at"] < self.not_before

    def consume(self, channel, prefix):
        stream = prefix + ".log"
        try:
            channel.queue_declare(queue=stream, passive=True)
        except ChannelClosedByBroker as err:
            raise SystemExit("pyprinter: the event log stream %s is not there (%s): the archiver declares it" % (stream, err))
        channel.basic_qos(prefetch_count=PREFETCH)  # a stream requires a prefetch
        channel.basic_consume(
            queue=stream,
            on_message_callback=self.on_message,
            auto_ack=False,  # and manual acks
            # After a reconnect: on after the last entry handled.
            arguments={"x-stream-offset": self.expected if self.handled else self.attach},
        )
        return stream


def run(url, prefix, reader=None):
    params = pika.URLParameters(url)
    params.client_properties = {"connection_name": NAME}
    backoff = 0.1
    while True:
        try:
            connection = pika.BlockingConnection(params)
        except AMQPConnectionError as err:
            print("pyprinter: cannot connect (%r); retrying in %.1fs" % (err, backoff), file=sys.stderr)
            time.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
            continue
        try:
            channel = connection.channel()
            if reader is not None:
                queue = reader.consume(channel, prefix)
            else:
                queue = declare(channel, prefix)
                channel.basic_qos(prefetch_count=PREFETCH)
                channel.basic_consume(queue=queue, on_message_callback=on_message, auto_ack=False)
            print("pyprinter: consuming %s (prefetch %d)" % (queue, PREFETCH), file=sys.stderr, flush=True)
            backoff = 0.1
            channel.start_consuming()
        except ChannelClosedByBroker as err:
            # e.g. 406 PRECONDITION_FAILED: a queue of this name exists with other arguments.
            print("pyprinter: the broker refused: %s" % err, file=sys.stderr)
            return 1
        except AMQPConnectionError as err:
            print("pyprinter: connection lost (%r); reconnecting" % (err,), file=sys.stderr)
            time.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
        finally:
            # Unacked deliveries go back to the queue when the connection closes.
            if connection.is_open:
                try:
                    connection.close()
                except Exception:
                    pass


def main():
    parser = argparse.ArgumentParser(description="Prints every chat event as one line.")
    parser.add_argument(
        "--from",
        dest="start",
        type=parse_start,
        metavar="first|TIME|OFFSET",
        help="read the event log stream <prefix>.log from the oldest retained event, from an "
        "RFC 3339 time, or from an offset, then follow live (instead of a queue of its own)",
    )
    parser.add_argument(
        "--offset-file",
        default=NAME + ".offset",
        help="where --from stores the offset of the last event handled, and resumes from "
        "(default: %(default)s); a stored offset wins over --from",
    )
    args = parser.parse_args()
    url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
    prefix = os.environ.get("CHAT_PREFIX", "chat")
    if not PREFIX_RE.fullmatch(prefix):
        print("pyprinter: CHAT_PREFIX must be 1 to 100 of A-Z a-z 0-9 _ - .", file=sys.stderr)
        return 2

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    reader = LogReader(args.start, OffsetFile(args.offset_file)) if args.start is not None else None
    try:
        return run(url, prefix, reader)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
