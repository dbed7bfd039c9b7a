"""Measures how long after a broker crash messages flow between two gateways again (run by
scripts/flow-back.sh, which starts the broker node and the services). With --cluster, a
node of a three-node cluster is killed instead and the time counts from the kill (see
one_cluster_run).

For each run: kill -9 of the broker node, start it again, and time from the moment
`rabbitmqctl await_startup` returns. Meanwhile alice (on gateway 1) says a probe every 0.5 s
from the kill on; the flow is back when bob (on gateway 2) receives a probe live. Also
records when each gateway's /healthz is 200 again (polled every 50 ms from the moment the
node's port accepts connections), to tell the reconnect delay from the rest. A negative
time means the flow was back before `await_startup` (itself an Erlang VM start) returned. Prints one line per run and a summary."""

import asyncio
import json
import subprocess
import sys
import time
import urllib.request

import websockets


def healthy(port):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % port, timeout=0.5) as r:
            return r.status == 200
    except Exception:
        return False


async def client(port, name):
    ws = await websockets.connect("ws://127.0.0.1:%d/ws" % port, ping_interval=None)
    hello = json.loads(await ws.recv())
    assert hello["type"] == "hello", hello
    await ws.send(json.dumps({"type": "join", "room": "lobby", "name": name}))
    while json.loads(await ws.recv())["type"] != "joined":
        pass
    return ws


async def read_live(bob, seen):
    """Records when each event's text first reached bob."""
    async for raw in bob:
        frame = json.loads(raw)
        if frame.get("type") == "event":
            seen.setdefault(frame["event"].get("text") or "", time.monotonic())


async def probe(alice, n, stop, sent):
    """Says a probe every 0.5 s on alice's gateway until `stop`; records (text, time) in `sent`."""
    k = 0
    while not stop.is_set():
        k += 1
        text = "probe-%d-%d" % (n, k)
        sent.append((text, time.monotonic()))
        await alice.send(json.dumps({"type": "say", "room": "lobby", "text": text, "ref": text}))
        await asyncio.sleep(0.5)


async def one_run(n, alice, bob, gw_ports, kill, start, await_startup):
    seen = {}
    answers = {}

    async def read_alice():
        async for raw in alice:
            frame = json.loads(raw)
            if frame.get("type") in ("ack", "error") and frame.get("ref"):
                answers[frame["ref"]] = frame["type"]

    readers = [asyncio.ensure_future(read_live(bob, seen)), asyncio.ensure_future(read_alice())]
    stop = asyncio.Event()
    sent = []

    up = {}

    async def watch_health(t_from):
        while not stop.is_set():
            for port in gw_ports:
                if port not in up and await asyncio.to_thread(healthy, port):
                    up[port] = time.monotonic() - t_from
            await asyncio.sleep(0.05)

    await asyncio.to_thread(subprocess.run, kill, shell=True, check=True)
    prober = asyncio.ensure_future(probe(alice, n, stop, sent))
    await asyncio.sleep(0.5)
    await asyncio.to_thread(subprocess.run, start, shell=True, check=True, stdout=subprocess.DEVNULL)
    port_open = time.monotonic()
    watcher = asyncio.ensure_future(watch_health(port_open))
    await asyncio.to_thread(subprocess.run, await_startup, shell=True, check=True, stdout=subprocess.DEVNULL)
    t0 = time.monotonic()
    flow = None
    while time.monotonic() - t0 < 30:
        live = [seen[t] for t, _ in sent if t in seen]
        if live:
            flow = min(live) - t0
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)
    stop.set()
    await prober
    watcher.cancel()
    for r in readers:
        r.cancel()
    ups = " ".join("gw%d_healthy_after_port_open_ms=%d" % (i + 1, up.get(p, -1) * 1000) for i, p in enumerate(gw_ports))
    print(
        "run %d: await_startup_after_port_open_ms=%d flow_back_after_await_startup_ms=%s flow_back_after_port_open_ms=%s %s"
        % (
            n,
            (t0 - port_open) * 1000,
            "none" if flow is None else "%d" % (flow * 1000),
            "none" if flow is None else "%d" % ((flow + t0 - port_open) * 1000),
            ups,
        ),
        flush=True,
    )
    return flow


async def one_cluster_run(n, alice, bob, kill, start, await_startup):
    """A cluster node is killed and the others go on: timed from the kill, until a probe
    said on gateway 1 (after the kill) reaches gateway 2 live; then the node is started
    again and the cluster awaited, ready for the next run. `kill` is two lines: a command
    that prints the node to kill, and the kill with `{node}` in it (as in `start`)."""
    seen = {}
    refused = []

    async def read_alice():
        async for raw in alice:
            frame = json.loads(raw)
            if frame.get("type") == "error" and frame.get("ref"):
                refused.append(frame.get("code"))

    readers = [asyncio.ensure_future(read_live(bob, seen)), asyncio.ensure_future(read_alice())]
    stop = asyncio.Event()
    sent = []

    # `kill` is run in two steps: its first line picks the node (a rabbitmqctl call, not
    # timed), its second kills it; then `start` brings that node back.
    pick, kill = kill.split("\n", 1)
    node = subprocess.run(pick, shell=True, check=True, capture_output=True, text=True).stdout.strip()
    kill, start = kill.replace("{node}", node), start.replace("{node}", node)
    t0 = time.monotonic()
    out = await asyncio.to_thread(subprocess.run, kill, shell=True, check=True, capture_output=True, text=True)
    killed = (time.monotonic() - t0) * 1000
    prober = asyncio.ensure_future(probe(alice, n, stop, sent))
    flow = None
    while time.monotonic() - t0 < 30:
        live = [seen[t] for t, _ in sent if t in seen]
        if live:
            flow = min(live) - t0
            break
        await asyncio.sleep(0.02)
    stop.set()
    await prober
    await asyncio.to_thread(subprocess.run, start, shell=True, check=True, stdout=subprocess.DEVNULL)
    await asyncio.to_thread(subprocess.run, await_startup, shell=True, check=True, stdout=subprocess.DEVNULL)
    for r in readers:
        r.cancel()
    print(
        "run %d: %s port_closed_after_kill_ms=%d flow_back_after_kill_ms=%s refused_probes=%d (%s)"
        % (
            n,
            out.stdout.strip().replace(" ", "_"),
            killed,
            "none" if flow is None else "%d" % (flow * 1000),
            len(refused),
            ",".join(refused) or "none",
        ),
        flush=True,
    )
    return flow


async def main():
    """flow_back.py GW1 GW2 RUNS KILL START AWAIT [--cluster]: with --cluster, times from
    the kill (one_cluster_run), else from the restarted node's await_startup (one_run)."""
    gw1, gw2, runs = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    kill, start, await_startup = sys.argv[4], sys.argv[5], sys.argv[6]
    cluster = sys.argv[7:] == ["--cluster"]
    flows = []
    for n in range(1, runs + 1):
        alice = await client(gw1, "alice")
        bob = await client(gw2, "bob")
        if cluster:
            flows.append(await one_cluster_run(n, alice, bob, kill, start, await_startup))
        else:
            flows.append(await one_run(n, alice, bob, [gw1, gw2], kill, start, await_startup))
        await alice.close()
        await bob.close()
        await asyncio.sleep(3)
    done = sorted(f for f in flows if f is not None)
    if done:
        pct = lambda q: done[min(len(done) - 1, int(q * len(done)))] * 1000
        print(
            "flow back after %s (ms): min=%d median=%d p90=%d max=%d runs=%d failed=%d"
            % (
                "the kill" if cluster else "await_startup",
                done[0] * 1000,
                pct(0.5),
                pct(0.9),
                done[-1] * 1000,
                len(flows),
                len(flows) - len(done),
            )
        )


asyncio.run(main())
