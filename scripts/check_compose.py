#!/usr/bin/env python3
"""Static checks of the container deployment: only what a real run cannot show.

scripts/compose-test.sh builds the image, brings docker-compose.yml up and chats through it,
so syntax, names, ports, health checks, volumes and the proxy are proven there. What a run
passes anyway, and is checked here instead:

- `.env.example` defines every variable the compose files (docker-compose.yml and
  docker-compose.cluster.yml) need without a default, and sets none both ignore (the test
  writes its own env file, so a user's first `docker compose up` is only guarded here);
- the clustered file's RabbitMQ nodes are the ones deploy/rabbitmq-cluster/cluster.conf
  lists (node name rabbit@<hostname>) and the ones every AMQP_URL names, and it uses the
  images docker-compose.yml uses, plus postgres (so the test's stand-ins cover it);
- `.dockerignore` keeps secrets and local data (.env, databases, target/) out of the build
  context;
- the Dockerfile copies every workspace member's Cargo.toml before any source, so the
  dependency layer is cached; builds with `--locked`; runs as a non-root user;
- every metric the alert rules (deploy/prometheus/alerts.yml) and the Grafana dashboard
  (deploy/grafana-dashboard.json) use is one the services export (chat-core/src/metrics.rs):
  a misspelt name is no error in Prometheus, just an empty panel or an alert that never fires.

Needs Python 3.11+ and nothing else; installs nothing. Exits 1 on any failure.
Usage: scripts/check-compose.sh (or python3 scripts/check_compose.py)
"""

import json
import os
import re
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
failures = []


def ok(msg):
    print(f"  ok    {msg}")


def fail(msg):
    print(f"  FAIL  {msg}")
    failures.append(msg)


def read(*parts):
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
        return f.read()


COMPOSE_FILES = ("docker-compose.yml", "docker-compose.cluster.yml")


def compose_variables(name):
    """(required, optional) variables of a compose file: ${X} and ${X:?…} need a value,
    ${X:-…} and ${X:+…} do not."""
    text = "\n".join(
        line for line in read(name).splitlines() if not line.lstrip().startswith("#")
    ).replace("$$", "")
    required, optional = set(), set()
    for m in re.finditer(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?+])?[^}]*\}|\$([A-Za-z_][A-Za-z0-9_]*)", text):
        name, op = m.group(1) or m.group(3), m.group(2) or ""
        (optional if op.endswith(("-", "+")) else required).add(name)
    return required, optional - required


def check_env_example():
    example = {}
    for line in read(".env.example").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            example[line.split("=", 1)[0].strip()] = True
    used = set()
    for name in COMPOSE_FILES:
        required, optional = compose_variables(name)
        used |= required | optional
        missing = sorted(required - set(example))
        if missing:
            fail(f".env.example lacks {', '.join(missing)} (used in {name} without a default)")
        else:
            ok(f".env.example defines what {name} requires: {', '.join(sorted(required))}")
    unused = sorted(set(example) - used)
    if unused:
        fail(f".env.example sets {', '.join(unused)}, which no compose file uses")
    else:
        ok(f".env.example sets nothing that {' and '.join(COMPOSE_FILES)} both ignore")


def check_cluster_file():
    text = read("docker-compose.cluster.yml")
    hostnames = re.findall(r"^    hostname: (rabbitmq-[0-9]+)$", text, re.M)
    listed = re.findall(r"^cluster_formation\.classic_config\.nodes\.[0-9]+ = rabbit@(\S+)$",
                        read("deploy", "rabbitmq-cluster", "cluster.conf"), re.M)
    if len(hostnames) == 3 and sorted(hostnames) == sorted(listed):
        ok(f"the three RabbitMQ nodes' hostnames are the nodes cluster.conf lists: {', '.join(listed)}")
    else:
        fail(f"RabbitMQ hostnames {hostnames} differ from cluster.conf's nodes {listed}")
    urls = re.findall(r"^  AMQP_URL: >-\n    (.+)$", text, re.M)
    hosts = [sorted(re.findall(r"@([a-z0-9-]+):5672/", url)) for url in urls]
    if urls and all(h == sorted(hostnames) for h in hosts):
        ok("AMQP_URL names every node of the cluster")
    else:
        fail(f"AMQP_URL should name each of {hostnames}, names {hosts}")
    images = lambda name: set(re.findall(r"^\s+image: (\S+)", read(name), re.M))  # noqa: E731
    extra = sorted(images("docker-compose.cluster.yml") - images("docker-compose.yml"))
    if all(i.startswith("postgres:") for i in extra):
        ok(f"docker-compose.cluster.yml uses docker-compose.yml's images, plus {', '.join(extra)}")
    else:
        fail(f"docker-compose.cluster.yml uses images that have no stand-in: {extra}")


def dockerignore_excludes(rel):
    """Docker's rules: the last matching pattern wins, `!` re-includes, a pattern matching a
    parent directory matches everything under it."""
    patterns = []
    for line in read(".dockerignore").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        patterns.append((negate, re.compile(f"^{regex}$")))
    parts = rel.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for negate, regex in patterns:
        if any(regex.match(c) for c in candidates):
            result = not negate
    return result


def check_dockerignore():
    for rel in (".env", "gateway/.env", "data/archive.db", "archiver/archive.db-wal", "target/x",
                "gateway/target/x", "e2e/node_modules/x"):
        if dockerignore_excludes(rel):
            ok(f".dockerignore keeps {rel} out of the build context")
        else:
            fail(f".dockerignore lets {rel} into the build context")


def dockerfile_instructions():
    """(stage index, instruction, arguments) with continuation lines joined."""
    out, current, stage = [], "", -1
    for raw in read("Dockerfile").splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not current):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        line, current = current + line, ""
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            stage += 1
        out.append((stage, word.upper(), rest.strip()))
    return out


def check_dockerfile():
    manifest = tomllib.loads(read("Cargo.toml"))
    members = manifest["workspace"]["members"]
    instructions = dockerfile_instructions()
    copies = [(i, args.split()) for i, (_, word, args) in enumerate(instructions)
              if word == "COPY" and "--from" not in args]
    first_source = min((i for i, args in copies if any(a.rstrip("/") in members for a in args[:-1])),
                       default=None)
    for member in members:
        at = [i for i, args in copies if f"{member}/Cargo.toml" in args[:-1]]
        if at and (first_source is None or at[0] < first_source):
            ok(f"{member}/Cargo.toml is copied before any source (cached dependency layer)")
        else:
            fail(f"{member}/Cargo.toml is not copied on its own before the sources: every "
                 "source change would rebuild all dependencies")
    builds = [args for (_, word, args) in instructions if word == "RUN" and "cargo build" in args]
    if builds and all(re.search(r"cargo build[^;&|]*--locked", b) for b in builds):
        ok(f"all {len(builds)} cargo builds use --locked")
    else:
        fail("every `cargo build` in the Dockerfile must use --locked")
    last = instructions[-1][0]
    users = [args for (stage, word, args) in instructions if stage == last and word == "USER"]
    if users and users[-1].split(":")[0] not in ("root", "0"):
        ok(f"the runtime stage runs as USER {users[-1]}")
    else:
        fail("the runtime stage must set a non-root USER")


def check_metric_names():
    exported = set(re.findall(r'describe_(?:counter|gauge|histogram)!\(\s*"(chat_[a-z_]+)"',
                              read("chat-core", "src", "metrics.rs")))
    histograms = set(re.findall(r'describe_histogram!\(\s*"(chat_[a-z_]+)"',
                                read("chat-core", "src", "metrics.rs")))
    if not exported:
        fail("found no metric descriptions in chat-core/src/metrics.rs")
        return

    def known(name):
        if name in exported:
            return True
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        return base in histograms

    dashboard = json.loads(read("deploy", "grafana-dashboard.json"))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    sources = {
        "deploy/prometheus/alerts.yml": set(re.findall(r"\bchat_[a-z_]+", read("deploy", "prometheus", "alerts.yml"))),
        "deploy/grafana-dashboard.json": {n for e in exprs for n in re.findall(r"\bchat_[a-z_]+", e)},
    }
    for source, names in sources.items():
        unknown = sorted(n for n in names if not known(n))
        if unknown:
            fail(f"{source} uses metrics no service exports: {', '.join(unknown)}")
        else:
            ok(f"{source}: all {len(names)} metric names are exported by the services")


def main():
    for title, check in (
        (".env.example against the compose files", check_env_example),
        ("docker-compose.cluster.yml", check_cluster_file),
        (".dockerignore", check_dockerignore),
        ("Dockerfile", check_dockerfile),
        ("metric names in alerts and dashboard", check_metric_names),
    ):
        print(f"\n== {title}")
        check()
    print()
    if failures:
        print(f"check-compose: {len(failures)} FAILED (see FAIL lines above)")
        return 1
    print("check-compose: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
