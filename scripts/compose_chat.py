#!/usr/bin/env python3
"""Chats through a running compose system, as a user would, and checks what the system made
of it. scripts/compose-test.sh runs it after `docker compose up --wait`; it reads the
project from the environment: DOCKER, PROJECT, ENV_FILE, HTTP_PORT, PROMETHEUS_PORT.

Every websocket goes through the nginx proxy's published port, with a browser's Origin for
a public host name on that port, so the proxy's Host handling and the gateways' Origin
check are exercised too. Steps, each printed as it passes:

1. two clients land on different gateways (the `gateway` of their `hello`) and chat both
   ways in a fresh room;
2. the chat log file on the logger's volume has the lines (`docker compose exec logger`);
3. the archive has them: `archiver history` in the archiver's container, and
   `/api/rooms/{room}/events` through the proxy;
4. Prometheus scrapes all four services and counted the messages;
5. gateway-1 is restarted: its client is dropped, reconnects through the proxy, lands on
   gw-2 while gw-1 is down, and resumes with `join` + `since` without a gap (the messages
   sent while it was away come as history, none twice); gw-1 serves again afterwards;
6. with the logger stopped, a message waits in the logger's durable queue; `docker compose
   down` and `up` again: the archive still has the room, and the logger, back, writes the
   waiting message (the queue and the message survived on the broker's volume).
"""

import asyncio
import collections
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

from websockets.asyncio.client import connect

DOCKER = os.environ.get("DOCKER", "docker")
PROJECT = os.environ["PROJECT"]
ENV_FILE = os.environ["ENV_FILE"]
PORT = int(os.environ["HTTP_PORT"])
PROM_PORT = int(os.environ["PROMETHEUS_PORT"])
# The compose file of the run (COMPOSE_FILE), when it is not docker-compose.yml.
FILES = ["-f", os.environ["COMPOSE_FILE"]] if os.environ.get("COMPOSE_FILE") else []
# A public name on a non-default port, as a browser would send it; it only needs to reach
# 127.0.0.1 here, so the socket is opened to that address (see Client.open).
PUBLIC_HOST = f"chat.example.test:{PORT}"
ROOM = "compose-" + uuid.uuid4().hex[:8]

passed = 0


def ok(what):
    global passed
    passed += 1
    print(f"  ok  {what}", flush=True)


def fail(what):
    print(f"  FAIL  {what}", flush=True)
    sys.exit(1)


def compose(*args, check=True, timeout=300):
    cmd = [DOCKER, "compose", "-p", PROJECT, "--env-file", ENV_FILE, *FILES, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        fail(f"{' '.join(args)} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done.stdout


def http_json(url):
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.load(resp)


def eventually(what, probe, timeout=30.0):
    """Calls probe() until it returns a true value or timeout seconds have passed."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = probe()
            if last:
                return last
        except Exception as err:  # noqa: BLE001 - retried, reported below if it persists
            last = err
        time.sleep(0.5)
    fail(f"{what}: not after {timeout:.0f}s (last: {last!r})")


class Client:
    """One chat user on one websocket through the proxy."""

    def __init__(self, name):
        self.name = name
        self.ws = None
        self.gateway = None
        self.seen = []  # ids of the room's message events, in the order received
        self.texts = []  # their texts
        self.frames = asyncio.Queue()

    async def open(self):
        self.ws = await connect(
            f"ws://{PUBLIC_HOST}/ws",
            host="127.0.0.1",
            port=PORT,
            origin=f"http://{PUBLIC_HOST}",
            open_timeout=10,
        )
        hello = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
        if hello.get("type") != "hello":
            fail(f"{self.name}: first frame is not hello: {hello}")
        self.gateway = hello["gateway"]
        self.frames = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())
        return self.gateway

    async def _read(self):
        try:
            async for raw in self.ws:
                frame = json.loads(raw)
                if frame.get("type") == "event":
                    self._note(frame["event"])
                await self.frames.put(frame)
        except Exception:  # noqa: BLE001 - a dropped connection ends the reader
            pass
        await self.frames.put({"type": "closed"})

    def _note(self, event):
        if event.get("type") == "message" and event.get("room") == ROOM:
            self.seen.append(event["id"])
            self.texts.append(event["text"])

    async def expect(self, pred, what, timeout=10, allow_error=False):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                fail(f"{self.name} ({self.gateway}): no {what} within {timeout}s")
            try:
                frame = await asyncio.wait_for(self.frames.get(), left)
            except asyncio.TimeoutError:
                continue
            if frame.get("type") == "error" and not allow_error:
                fail(f"{self.name}: error frame while waiting for {what}: {frame}")
            if frame.get("type") == "closed" and what != "close":
                fail(f"{self.name}: connection closed while waiting for {what}")
            if pred(frame):
                return frame

    async def join(self, since=None):
        ref = uuid.uuid4().hex[:8]
        req = {"type": "join", "room": ROOM, "name": self.name, "ref": ref}
        if since:
            req["since"] = since
        await self.ws.send(json.dumps(req))
        joined = await self.expect(
            lambda f: f.get("type") == "joined" and f.get("ref") == ref, "joined"
        )
        for event in joined["history"]:
            self._note(event)
        return joined

    async def say(self, text):
        ref = uuid.uuid4().hex[:8]
        await self.ws.send(json.dumps({"type": "say", "room": ROOM, "text": text, "ref": ref}))
        ack = await self.expect(lambda f: f.get("type") == "ack" and f.get("ref") == ref, "ack")
        return ack["id"]

    async def receives(self, text):
        if text in self.texts:
            return
        await self.expect(
            lambda f: f.get("type") == "event" and f["event"].get("text") == text,
            f"event {text!r}",
        )

    async def close(self):
        if self.ws is not None:
            await self.ws.close()
            self.reader.cancel()


async def two_clients_on_different_gateways():
    alice, bob = Client("alice"), Client("bob")
    await alice.open()
    # nginx sends each new websocket to the gateway holding fewer (least_conn): the second
    # lands on the other one. Retry a few times in case another client held one.
    for _ in range(5):
        await bob.open()
        if bob.gateway != alice.gateway:
            break
        await bob.close()
    if bob.gateway == alice.gateway:
        fail(f"both clients land on {alice.gateway}")
    ok(f"alice on {alice.gateway}, bob on {bob.gateway}, both through the proxy on :{PORT}")
    return alice, bob


def log_lines():
    """The chat log file on the logger's volume, this room's lines (`<time> #room <user> text`)."""
    text = compose("exec", "-T", "logger", "cat", "/var/lib/chat/log/chat.log")
    return "\n".join(line for line in text.splitlines() if f" #{ROOM} " in line)


def history_lines():
    return compose("exec", "-T", "archiver", "archiver", "history", ROOM, "--limit", "100")


def api_events():
    url = f"http://127.0.0.1:{PORT}/api/rooms/{ROOM}/events?limit=100"
    return http_json(url)["events"]


def prom_query(expr):
    url = f"http://127.0.0.1:{PROM_PORT}/api/v1/query?query={urllib.parse.quote(expr)}"
    try:
        body = http_json(url)
    except urllib.error.HTTPError as err:
        body = json.load(err)
    if body.get("status") != "success":
        fail(f"Prometheus rejects {expr!r}: {body.get('error')}")
    return body["data"]["result"]


# Dashboard panels that must show data after a chat (the others count faults).
PANELS_WITH_DATA = {"Chat throughput", "Delivery latency", "Publish confirm time",
                    "Archive lag", "Clients"}


def dashboard_queries():
    """Every query of deploy/grafana-dashboard.json is valid PromQL for this Prometheus, and
    the panels about traffic show data after the chat above (rates need two scrapes, so
    this may take a scrape interval or two)."""
    with open(os.path.join(os.path.dirname(__file__), "..", "deploy", "grafana-dashboard.json")) as f:
        panels = json.load(f)["panels"]

    def empty_panels():
        empty = []
        for panel in panels:
            exprs = [t["expr"].replace("$__rate_interval", "1m") for t in panel["targets"]]
            results = [prom_query(e) for e in exprs]
            if panel["title"] in PANELS_WITH_DATA and not any(results):
                empty.append(panel["title"])
        return empty

    deadline = time.monotonic() + 60
    while empty := empty_panels():
        if time.monotonic() > deadline:
            fail(f"dashboard panels without data after a chat: {empty}")
        time.sleep(5)
    ok(f"the {len(panels)} dashboard panels' queries run; throughput, latency, confirm "
       "time, archive lag and clients show data")


async def chat_both_ways():
    """alice and bob, on different gateways, join ROOM and each says hello to the other;
    returns both clients, their texts and the acked ids."""
    alice, bob = await two_clients_on_different_gateways()
    await alice.join()
    await bob.join()
    a_text = f"hello from alice on {alice.gateway}"
    b_text = f"hello from bob on {bob.gateway}"
    a_id = await alice.say(a_text)
    await bob.receives(a_text)
    b_id = await bob.say(b_text)
    await alice.receives(b_text)
    ok("alice -> bob and bob -> alice across the gateways, each acked after the broker's confirm")
    return alice, bob, a_text, b_text, a_id, b_id


async def main():
    print(f"  room {ROOM}")

    # 1. Both ways.
    alice, bob, a_text, b_text, a_id, b_id = await chat_both_ways()

    # 2. The chat log, on the logger's volume.
    eventually(
        "chat log lines",
        lambda: f"<~alice> {a_text}" in log_lines() and f"<~bob> {b_text}" in log_lines(),
    )
    ok("the chat log file on the logger's volume has both lines")

    # 3. The archive: the CLI in the archiver's container, and the API through the proxy.
    eventually(
        "archiver history",
        lambda: f"<~alice> {a_text}" in history_lines() and f"<~bob> {b_text}" in history_lines(),
    )
    ok(f"archiver history {ROOM} (archive on the archive volume) has both lines")
    eventually("API events", lambda: {a_id, b_id} <= {e["id"] for e in api_events()})
    ok(f"GET /api/rooms/{ROOM}/events through the proxy has both events")

    # 4. Prometheus scrapes every service and saw the messages.
    def targets_up():
        data = http_json(f"http://127.0.0.1:{PROM_PORT}/api/v1/targets")["data"]
        up = {t["labels"]["instance"] for t in data["activeTargets"] if t["health"] == "up"}
        return up >= {"gateway-1:3000", "gateway-2:3000", "archiver:3100", "logger:3200"}

    eventually("Prometheus targets up", targets_up, timeout=60)

    def published():
        q = "sum(chat_events_published_total)"
        url = f"http://127.0.0.1:{PROM_PORT}/api/v1/query?query={urllib.parse.quote(q)}"
        result = http_json(url)["data"]["result"]
        return result and float(result[0]["value"][1]) >= 4  # 2 joins, 2 messages

    eventually("chat_events_published_total scraped", published, timeout=60)
    rules = http_json(f"http://127.0.0.1:{PROM_PORT}/api/v1/rules")["data"]["groups"]
    if not any(r["name"] == "ChatBrokerDisconnected" for g in rules for r in g["rules"]):
        fail("Prometheus did not load the alert rules")
    ok("Prometheus scrapes gateway-1, gateway-2, archiver and logger, and loaded the alerts")
    dashboard_queries()

    # 5. Restart gateway-1; its client resumes on gw-2 with `since`, without a gap.
    on_gw1, other = (alice, bob) if alice.gateway == "gw-1" else (bob, alice)
    last_seen = on_gw1.seen[-1]
    compose("stop", "gateway-1")
    await on_gw1.expect(lambda f: f.get("type") == "closed", "close", timeout=30)
    gap = [f"sent while gw-1 is down, #{i}" for i in range(3)]
    for text in gap:
        await other.say(text)
    await on_gw1.open()
    if on_gw1.gateway != "gw-2":
        fail(f"{on_gw1.name} reconnected to {on_gw1.gateway} while gw-1 is stopped")
    await on_gw1.join(since=last_seen)
    for text in gap:
        await on_gw1.receives(text)
    if len(on_gw1.seen) != len(set(on_gw1.seen)):
        fail(f"{on_gw1.name} got an event twice: {on_gw1.seen}")
    if on_gw1.seen != other.seen:
        fail(f"{on_gw1.name} saw {on_gw1.texts}, {other.name} saw {other.texts}")
    ok(f"gateway-1 stopped: {on_gw1.name} resumed on gw-2 with since, the 3 messages "
       "sent meanwhile came as history, none missing or twice")
    compose("start", "gateway-1")
    compose("up", "-d", "--wait", "--no-recreate", "--no-build")
    # least_conn: with both clients on gw-2, the next websocket goes to gw-1 if the proxy
    # still reaches it (a restarted container can come back under a new address).
    probe = Client("carol")

    async def lands_on_gw1():
        for _ in range(20):
            await probe.open()
            gw = probe.gateway
            await probe.close()
            if gw == "gw-1":
                return True
            await asyncio.sleep(1)
        return False

    if not await lands_on_gw1():
        fail("after its restart, gw-1 gets no websocket through the proxy")
    ok("gateway-1 started again and serves through the proxy")
    final = f"after the restart, from {other.name}"
    await other.say(final)
    await on_gw1.receives(final)
    await alice.close()
    await bob.close()

    # 6. A message waits in the logger's durable queue across `down` and `up`.
    compose("stop", "logger")
    dave = Client("dave")
    await dave.open()
    await dave.join()
    waiting = "written while the logger is stopped"
    await dave.say(waiting)
    await dave.close()
    eventually("archived before down", lambda: f"<~dave> {waiting}" in history_lines())
    # chat.logger is a quorum queue: RabbitMQ refreshes its message count about every 5 s
    # (the queue's tick), so a count read at once can still say 0; wait for it.
    def logger_queue():
        queues = compose("exec", "-T", "rabbitmq", "rabbitmqctl", "-q", "list_queues", "name",
                         "durable", "type", "messages")
        rows = [line.split() for line in queues.splitlines()
                if line.split()[:1] == ["chat.logger"]]
        return rows[0] if rows and rows[0][1] == "true" and int(rows[0][3]) >= 1 else None

    logger_q = eventually("chat.logger is durable and holds the message", logger_queue,
                          timeout=20.0)
    ok(f"logger stopped: {logger_q[3]} message(s) wait in the durable {logger_q[2]} queue "
       "chat.logger")

    compose("down", "--timeout", "20")
    ok("docker compose down (volumes kept)")
    compose("up", "-d", "--wait", "--no-build")
    ok("docker compose up -d --wait again")
    history = history_lines()
    for text in [a_text, b_text, *gap, final, waiting]:
        if text not in history:
            fail(f"archive lost {text!r} across down/up:\n{history}")
    ok("the archive kept every message across down/up")
    eventually("logger catches up", lambda: f"<~dave> {waiting}" in log_lines())
    lines = log_lines()
    if f"<~alice> {a_text}" not in lines:
        fail(f"the chat log lost the earlier lines:\n{lines}")
    ok("the logger wrote the message that waited in its queue; the chat log kept the rest")
    queues = compose("exec", "-T", "rabbitmq", "rabbitmqctl", "-q", "list_queues", "name",
                     "durable")
    for name in ("chat.logger", "chat.archiver", "chat.dead"):
        if not any(line.split()[:2] == [name, "true"] for line in queues.splitlines()):
            fail(f"durable queue {name} missing after down/up: {queues}")
    ok("durable queues chat.logger, chat.archiver, chat.dead are there after down/up")

    # The same client after a fresh start: chat still works end to end.
    erin = Client("erin")
    await erin.open()
    await erin.join()
    await erin.say("still here")
    await erin.receives("still here")
    await erin.close()
    ok(f"a new client chats after down/up ({erin.gateway})")


# --- The clustered deployment (docker-compose.cluster.yml) ---------------------------------

NODES = ["rabbitmq-1", "rabbitmq-2", "rabbitmq-3"]
NODE_NAMES = {f"rabbit@{n}": n for n in NODES}
QUORUM_QUEUES = ("chat.logger", "chat.archiver", "chat.dead")
ARCHIVERS = ["archiver-1", "archiver-2"]


def rabbitmqctl(node, *args):
    """rabbitmqctl in a node's container, JSON output parsed."""
    out = compose("exec", "-T", node, "rabbitmqctl", "-q", *args, "--formatter", "json")
    start = min(i for i in (out.find("["), out.find("{")) if i >= 0)
    return json.loads(out[start:])


def queues(node):
    """The cluster's queues, by name, as `node` sees them."""
    rows = rabbitmqctl(node, "list_queues", "name", "type", "leader", "members", "online",
                       "consumers")
    return {row["name"]: row for row in rows}


def cluster_history(archiver, limit=1000):
    return compose("exec", "-T", archiver, "archiver", "history", ROOM, "--limit", str(limit))


def archiver_api_ids(archiver):
    """The room's event ids as one archiver's own API answers (inside its container)."""
    out = compose("exec", "-T", archiver, "curl", "-fsS",
                  f"http://127.0.0.1:3100/api/rooms/{ROOM}/events?limit=1000")
    return [e["id"] for e in json.loads(out)["events"]]


def proxy_api_ids():
    url = f"http://127.0.0.1:{PORT}/api/rooms/{ROOM}/events?limit=1000"
    return [e["id"] for e in http_json(url)["events"]]


def postgres_message_ids():
    """The room's message ids in the PostgreSQL database itself."""
    out = compose("exec", "-T", "postgres", "psql", "-U", "chat", "-d", "chat_archive", "-tA",
                  "-v", "ON_ERROR_STOP=1", "-c",
                  f"SELECT id FROM events WHERE room = '{ROOM}' AND type = 'message' ORDER BY seq")
    return out.split()


def stored_by(archiver):
    """chat_events_stored_total of one archiver (its own /metrics)."""
    out = compose("exec", "-T", archiver, "curl", "-fsS", "http://127.0.0.1:3100/metrics")
    return sum(float(line.split()[-1]) for line in out.splitlines()
               if line.startswith("chat_events_stored_total"))


async def aeventually(what, probe, timeout=30.0):
    """eventually() for while clients run: the probe runs in a thread, so that the event
    loop keeps reading the websockets (and answering the gateways' pings)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = await asyncio.to_thread(probe)
            if last:
                return last
        except Exception as err:  # noqa: BLE001 - retried, reported below if it persists
            last = err
        await asyncio.sleep(0.5)
    fail(f"{what}: not after {timeout:.0f}s (last: {last!r})")


async def acompose(*args, **kwargs):
    return await asyncio.to_thread(compose, *args, **kwargs)


def quorum_ok(qs, online):
    """Every quorum queue has the three nodes as members and `online` of them online."""
    for name in QUORUM_QUEUES:
        q = qs.get(name)
        if q is None or q["type"] != "quorum" or sorted(q["members"]) != sorted(NODE_NAMES):
            return False
        if sorted(q["online"]) != sorted(online):
            return False
    return True


class Sender:
    """A client saying one message after another (each after the previous one's ack) until
    stopped; notes which were acked and when, and which were refused."""

    def __init__(self, client, pause=0.2):
        self.client = client
        self.pause = pause
        self.acked = []  # (sent at, acked at, id, text)
        self.refused = []  # (error frame, text)
        self.stop = asyncio.Event()
        self.task = None

    def start(self):
        self.task = asyncio.create_task(self._run())

    async def _run(self):
        n = 0
        while not self.stop.is_set():
            text = f"{self.client.name} steady #{n}"
            n += 1
            ref = uuid.uuid4().hex[:8]
            sent = time.monotonic()
            await self.client.ws.send(
                json.dumps({"type": "say", "room": ROOM, "text": text, "ref": ref}))
            # A publish waits at most PUBLISH_TIMEOUT_MS (5 s) for the broker, retries
            # included; past that the gateway answers `unavailable`.
            frame = await self.client.expect(
                lambda f: f.get("ref") == ref and f.get("type") in ("ack", "error"),
                f"ack or error for {text!r}", timeout=20, allow_error=True)
            if frame["type"] == "ack":
                self.acked.append((sent, time.monotonic(), frame["id"], text))
            else:
                self.refused.append((frame, text))
            await asyncio.sleep(self.pause)

    async def finish(self):
        self.stop.set()
        await self.task


async def cluster_main():
    print(f"  room {ROOM}")

    # 1. The cluster: three nodes, the quorum queues on all three, two archivers consuming.
    status = rabbitmqctl("rabbitmq-1", "cluster_status")
    running = sorted(status.get("running_nodes", []))
    if running != sorted(NODE_NAMES):
        fail(f"the cluster's running nodes are {running}, not the three")
    ok(f"three RabbitMQ nodes run as one cluster: {', '.join(running)}")
    qs = eventually("quorum queues on three nodes, two archivers consuming",
                    lambda: (q := queues("rabbitmq-2")) and quorum_ok(q, NODE_NAMES)
                    and q["chat.archiver"]["consumers"] == 2 and q)
    ok("chat.logger, chat.archiver and chat.dead are quorum queues with a member on each "
       f"node (chat.archiver's leader: {qs['chat.archiver']['leader']}); chat.archiver has "
       "2 consumers (the archivers)")

    # 2. Chat through the proxy, across the gateways.
    alice, bob, a_text, b_text, a_id, b_id = await chat_both_ways()
    eventually("chat log lines",
               lambda: f"<~alice> {a_text}" in log_lines() and f"<~bob> {b_text}" in log_lines())
    ok("the logger wrote both lines to the chat log")

    # 3. Both archivers answer the same history from the one PostgreSQL database.
    for archiver in ARCHIVERS:
        eventually(f"{archiver} history", lambda a=archiver: f"<~alice> {a_text}" in
                   cluster_history(a) and f"<~bob> {b_text}" in cluster_history(a))
    eventually("both archivers' APIs agree",
               lambda: {a_id, b_id} <= set(archiver_api_ids("archiver-1"))
               and archiver_api_ids("archiver-1") == archiver_api_ids("archiver-2"))
    eventually("API through the proxy", lambda: {a_id, b_id} <= set(proxy_api_ids()))
    if not {a_id, b_id} <= set(postgres_message_ids()):
        fail("the messages are not in PostgreSQL's events table")
    ok("archiver-1 and archiver-2 answer the same history (CLI and API, and /api/ through "
       "the proxy), from the events table in PostgreSQL")

    # 4. Prometheus scrapes all six services.
    want = {"gateway-1:3000", "gateway-2:3000", "archiver-1:3100", "archiver-2:3100",
            "logger:3200"}

    def targets_up():
        data = http_json(f"http://127.0.0.1:{PROM_PORT}/api/v1/targets")["data"]
        return {t["labels"]["instance"] for t in data["activeTargets"]
                if t["health"] == "up"} >= want

    eventually("Prometheus targets up", targets_up, timeout=60)
    ok(f"Prometheus scrapes {', '.join(sorted(want))}")

    # 5. A node is killed mid-chat: the leader of chat.archiver.
    victim = NODE_NAMES[qs["chat.archiver"]["leader"]]
    survivor = next(n for n in NODES if n != victim)
    # Which node holds each client connection: the connection's process id names it in
    # rabbitmqctl's table output (`<rabbit@rabbitmq-1.…>`; its JSON output drops the node,
    # and rabbitmqctl 3.10 has no `node` column for connections).
    table = await acompose("exec", "-T", survivor, "rabbitmqctl", "-q", "list_connections",
                           "pid")
    pids = [line.strip() for line in table.splitlines() if line.strip().startswith("<")]
    on = collections.Counter(m.group(1) if (m := re.match(r"<rabbit@([\w-]+)\.", pid))
                             else "?" for pid in pids)
    per_node = {n: on[n] for n in NODES}
    if on["?"]:
        per_node["unknown"] = on["?"]
    print(f"  client connections per node: {per_node}")
    senders = [Sender(alice), Sender(bob)]
    for s in senders:
        s.start()
    await asyncio.sleep(2)
    killed_at = time.monotonic()
    await acompose("kill", "-s", "SIGKILL", victim)
    print(f"  killed {victim} (SIGKILL) with {per_node[victim]} client connection(s) on it",
          flush=True)
    await asyncio.sleep(8)

    def moved():
        q = queues(survivor)
        online = [n for n in NODE_NAMES if NODE_NAMES[n] != victim]
        return quorum_ok(q, online) and NODE_NAMES[q["chat.archiver"]["leader"]] != victim and q

    q = await aeventually("a new leader for chat.archiver on the survivors", moved, timeout=30)
    ok(f"{victim} down: the quorum queues keep 2 of 3 members online, chat.archiver's "
       f"leader is now {q['chat.archiver']['leader']}")
    for s in senders:
        after = [a for a in s.acked if a[0] > killed_at]
        if len(after) < 5:
            fail(f"{s.client.name}: only {len(after)} message(s) acked after the kill "
                 f"({len(s.refused)} refused: {[f for f, _ in s.refused[:3]]})")
    ok(f"chat goes on without {victim}: "
       + ", ".join(f"{s.client.name} had {sum(1 for a in s.acked if a[0] > killed_at)} "
                   "messages acked since the kill" for s in senders))

    # 6. The node comes back and rejoins; the chat still goes on meanwhile.
    restarted_at = time.monotonic()
    await acompose("start", victim)
    await acompose("up", "-d", "--wait", "--no-recreate", "--no-build")
    await aeventually(f"{victim} back in the quorum queues",
                      lambda: quorum_ok(queues(victim), NODE_NAMES), timeout=60)
    status = await asyncio.to_thread(rabbitmqctl, survivor, "cluster_status")
    if sorted(status.get("running_nodes", [])) != sorted(NODE_NAMES):
        fail(f"after the restart the running nodes are {status.get('running_nodes')}")
    ok(f"{victim} started again: back in the cluster, every quorum queue has 3 members online")
    await asyncio.sleep(2)
    for s in senders:
        await s.finish()
    acked = [a for s in senders for a in s.acked]
    refused = [r for s in senders for r in s.refused]
    # Longest wait for an ack, from the send: how long the kill held a message up.
    worst = max(a[1] - a[0] for a in acked)
    codes = collections.Counter(f.get("code", "?") for f, _ in refused)
    down = sum(1 for a in acked if killed_at < a[0] < restarted_at)
    print(f"  {down} messages acked while {victim} was down "
          f"({restarted_at - killed_at:.1f}s), {len(acked) - down} around it", flush=True)
    ok(f"{len(acked)} messages acked during the kill and the restart, {len(refused)} refused "
       f"({', '.join(f'{n} {c}' for c, n in codes.items()) or 'none'}); the slowest ack "
       f"took {worst:.2f}s")

    # 7. Nothing acked is lost, nothing is stored or delivered twice.
    ids = {a[2] for a in acked} | {a_id, b_id}
    texts = [a[3] for a in acked]
    for c in (alice, bob):
        await aeventually(f"{c.name} received every acked message", lambda c=c: ids <= set(c.seen))
        if len(c.seen) != len(set(c.seen)):
            fail(f"{c.name} got an event twice")
    ok(f"alice and bob each received all {len(ids)} acked messages, none twice")
    await aeventually("PostgreSQL holds every acked message", lambda: ids <= set(postgres_message_ids()))
    pg = await asyncio.to_thread(postgres_message_ids)
    if len(pg) != len(set(pg)):
        fail("a message is stored twice")
    await aeventually("both archivers' APIs agree after the kill",
               lambda: ids <= set(archiver_api_ids("archiver-1"))
               and archiver_api_ids("archiver-1") == archiver_api_ids("archiver-2")
               == proxy_api_ids())
    ok(f"the archive has each of the {len(ids)} acked messages once, and both archivers "
       "(and /api/ through the proxy) answer the same")

    def all_logged():
        # A message's line is `<time> #room <~user> text`; joins and leaves (`* ~user
        # joined`) are lines too, without a text.
        logged = collections.Counter(m.group(1) for line in log_lines().splitlines()
                                     if (m := re.match(r"\S+ #\S+ <[^>]*> (.*)$", line)))
        return all(logged[t] == 1 for t in texts)

    await aeventually("the chat log has every acked message once", all_logged)
    ok(f"the chat log has each of the {len(texts)} acked messages once")

    # A refused message: `unavailable` means the gateway did not publish it, so no one
    # may see it; `unconfirmed` means it may have been published, then at most once.
    logged = collections.Counter(m.group(1) for line in log_lines().splitlines()
                                 if (m := re.match(r"\S+ #\S+ <[^>]*> (.*)$", line)))
    for frame, text in refused:
        seen = [logged[text]] + [c.texts.count(text) for c in (alice, bob)]
        if frame.get("code") == "unavailable" and any(seen):
            fail(f"{text!r} was refused as unavailable (not published), yet delivered or "
                 f"logged {seen} times (log, alice, bob): {frame}")
        if max(seen) > 1:
            fail(f"the refused {text!r} was delivered or logged twice: {seen}")
    if refused:
        ok(f"none of the {len(refused)} refused messages reached a client or the chat log "
           "(unavailable: not published)" if all(f.get("code") == "unavailable"
                                                  for f, _ in refused)
           else f"the {len(refused)} refused messages reached each client and the log at "
                "most once, the `unavailable` ones not at all")
    stored = {a: await asyncio.to_thread(stored_by, a) for a in ARCHIVERS}
    qs = await aeventually("two archiver consumers again",
                    lambda: (q := queues(survivor))["chat.archiver"]["consumers"] == 2 and q)
    ok(f"both archivers consume chat.archiver again (events stored: "
       f"{', '.join(f'{a} {int(n)}' for a, n in stored.items())})")

    # 8. A newcomer gets the history through the broker (the archivers' history queue
    # survived or was declared again) and chats.
    carol = Client("carol")
    await carol.open()
    joined = await carol.join()
    last = acked[-1][2] if acked else b_id
    if last not in {e["id"] for e in joined["history"]}:
        fail("carol's join history lacks the latest acked message")
    await carol.say("carol after the failover")
    await alice.receives("carol after the failover")
    ok(f"a new client (on {carol.gateway}) joins with the latest history and chats")
    for c in (alice, bob, carol):
        await c.close()


if __name__ == "__main__":
    if "--cluster" in sys.argv[1:]:
        asyncio.run(cluster_main())
    else:
        asyncio.run(main())
    print(f"compose-chat: {passed} passed, 0 failed")
