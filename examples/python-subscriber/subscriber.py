#!/usr/bin/env python3
"""pyprinter: a minimal side subscriber of the chat's event stream.

It binds its own durable queue `<prefix>.pyprinter` to the fanout exchange
`<prefix>.events`, prints every event as one line and acks it after printing.
Anything that is not a valid v1 event is rejected without requeue, so the broker
dead-letters it to `<prefix>.dead` (via `<prefix>.dlx`) instead of redelivering it
forever. See docs/topology.md for the contract this follows.

Settings (environment):
    AMQP_URL     default amqp://guest:guest@127.0.0.1:5672/%2f
    CHAT_PREFIX  default chat
"""

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


def decode(body):
    """Parses and validates one delivery; raises InvalidEvent. Mirrors Event::decode."""
    try:
        event = json.loads(body.decode("utf-8"), object_pairs_hook=no_duplicate_keys)
    except (UnicodeDecodeError, ValueError) as err:
        raise InvalidEvent("not a JSON event: %s" % err)
    if not isinstance(event, dict):
        raise InvalidEvent("not a JSON object")
    v = event.get("v")
    if type(v) is not int or v != 1:  # `type(...) is int` also refuses true/false
        raise InvalidEvent("unsupported schema version %r" % (v,))
    if not TOKEN_RE.fullmatch(string(event, "id")):
        raise InvalidEvent("invalid event id")
    if not TOKEN_RE.fullmatch(string(event, "gateway")):
        raise InvalidEvent("invalid gateway id")
    kind = string(event, "type")
    if kind not in ("message", "join", "leave"):
        raise InvalidEvent("unknown type %r" % kind)
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
    text = event.get("text")
    if kind == "message":
        if text is None:
            raise InvalidEvent("a message event must carry text")
        text = string(event, "text")
        if (
            not text.strip()
            or len(text) > MAX_TEXT
            or text != unicodedata.normalize("NFC", text)
            or any(c != "\n" and (c == "\t" or forbidden(c)) for c in text)
        ):
            raise InvalidEvent("invalid or unnormalised text")
    elif text is not None:
        raise InvalidEvent("a %s event must not carry text" % kind)
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
    if event["type"] == "message":
        return head + "%s: %s" % (escape(event["user"]), escape(event["text"]))
    return head + "* %s %s" % (escape(event["user"]), "joined" if event["type"] == "join" else "left")


# --- The broker side.


def declare(channel, prefix):
    """Declares exactly what chat-core/src/topology.rs declares for a side subscriber
    (declare_base + declare_subscriber_queue), so start-up order does not matter. The
    flags and arguments must match the other services' or the broker refuses them."""
    events, dlx, dead = prefix + ".events", prefix + ".dlx", prefix + ".dead"
    channel.exchange_declare(exchange=events, exchange_type="fanout", durable=True)
    channel.exchange_declare(exchange=dlx, exchange_type="fanout", durable=True)
    channel.queue_declare(queue=dead, durable=True)
    channel.queue_bind(queue=dead, exchange=dlx, routing_key="")
    queue = "%s.%s" % (prefix, NAME)
    channel.queue_declare(queue=queue, durable=True, arguments={"x-dead-letter-exchange": dlx})
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


def run(url, prefix):
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
    url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
    prefix = os.environ.get("CHAT_PREFIX", "chat")
    if not PREFIX_RE.fullmatch(prefix):
        print("pyprinter: CHAT_PREFIX must be 1 to 100 of A-Z a-z 0-9 _ - .", file=sys.stderr)
        return 2

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        return run(url, prefix)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
