#!/usr/bin/env bash
# Static checks of the container deployment, for CI machines without a Docker engine:
# Dockerfile, .dockerignore, docker-compose.yml, .env.example and deploy/nginx.conf.
#
# What is checked:
#   1. compose  docker-compose.yml against the Compose specification's JSON schema
#               (check-jsonschema --builtin-schema vendor.compose-spec, its vendored copy:
#               no network), then what the schema cannot see: depends_on and named volumes
#               point at things that exist; every variable compose needs without a default
#               is in .env.example; each `build:` service runs a binary the image installs;
#               a service listening for the proxy binds 0.0.0.0 on the port its healthcheck
#               probes; file paths in LOG_FILE/DATABASE_URL lie on a mounted volume whose
#               mount point the image creates (so a fresh volume is owned by `chat`).
#   2. nginx    `nginx -t` on a temporary copy of deploy/nginx.conf in which the upstream
#               hosts (compose service names, unresolvable outside Docker) are 127.0.0.1,
#               the `user` line is dropped when that user does not exist here, and the pid
#               and log files go to the temporary folder. So syntax, directives, contexts
#               and the `map`/upstream wiring are checked with Debian's nginx (older than the
#               image's 1.27: a directive new in 1.23+ would be flagged here); name
#               resolution and runtime behaviour are not. Then: every upstream host is a
#               compose service the proxy depends on, with a matching port, and the proxy
#               publishes the port nginx listens on and mounts this file.
#   3. docker   Dockerfile against the repository: every path it COPYs from the build
#               context exists and is not excluded by .dockerignore; every workspace
#               member's Cargo.toml and sources are copied, and Cargo.lock; every file the
#               sources embed at compile time (include_str!/include_bytes!/sqlx::migrate!)
#               is copied; `cargo build` is --locked; every binary copied out of
#               target/release is a binary target of the workspace; the image runs non-root.
#
# Not checked (that needs a Docker engine): that the image builds, that `docker compose
# config` interpolates as intended, that the stack starts and becomes healthy.
#
# Installs what is missing: check-jsonschema (PyPI) and nginx (Debian), which needs root or
# sudo for apt-get. Usage: scripts/check-compose.sh   (from anywhere; exits 1 on failure)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
export ROOT

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

section() { printf '\n== %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "need root (or sudo) to run: $*" >&2
        return 1
    fi
}

# --- tools -----------------------------------------------------------------------------

PY=python3
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

pip_install() {
    if "$PY" -m pip install --quiet "$@"; then
        return 0
    fi
    # An "externally managed" interpreter (PEP 668) refuses: use a private venv instead.
    local venv="${XDG_CACHE_HOME:-$HOME/.cache}/chat-check-compose-venv"
    echo "pip refused; installing into $venv" >&2
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    PY="$venv/bin/python"
    "$PY" -m pip install --quiet "$@"
}

ensure_python_tools() {
    local need=()
    "$PY" -c 'import check_jsonschema' 2>/dev/null || need+=(check-jsonschema)
    "$PY" -c 'import tomllib' 2>/dev/null || "$PY" -c 'import tomli' 2>/dev/null || need+=(tomli)
    if [ "${#need[@]}" -gt 0 ]; then
        echo "installing ${need[*]} (PyPI)"
        pip_install "${need[@]}"
        # A venv chosen above may lack what the system interpreter had.
        "$PY" -c 'import tomllib' 2>/dev/null || "$PY" -c 'import tomli' 2>/dev/null ||
            pip_install tomli
    fi
}

NGINX=
ensure_nginx() {
    NGINX=$(command -v nginx || true)
    [ -n "$NGINX" ] || { [ -x /usr/sbin/nginx ] && NGINX=/usr/sbin/nginx; } || true
    if [ -z "$NGINX" ]; then
        echo "installing nginx (Debian package)"
        # On a systemd host the package also starts its default site on port 80.
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends nginx >/dev/null
        NGINX=$(command -v nginx || echo /usr/sbin/nginx)
    fi
}

ensure_python_tools
ensure_nginx

# --- the checks, in Python (YAML/TOML parsing); each mode prints its findings ------------

pycheck() {
    "$PY" - "$@" <<'PYTHON'
import glob
import os
import re
import shlex
import subprocess
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

ROOT = os.environ["ROOT"]
failures = []


def ok(msg):
    print(f"  ok    {msg}")


def fail(msg):
    print(f"  FAIL  {msg}")
    failures.append(msg)


def path(*parts):
    return os.path.join(ROOT, *parts)


def load_yaml(file):
    try:
        import yaml

        with open(file) as f:
            return yaml.safe_load(f)
    except ModuleNotFoundError:
        from ruamel.yaml import YAML

        with open(file) as f:
            return YAML(typ="safe").load(f)


# --- Dockerfile ----------------------------------------------------------------------

def dockerfile_instructions():
    """(stage, instruction, flags, args) for each instruction; continuations joined."""
    lines, current = [], ""
    with open(path("Dockerfile")) as f:
        for raw in f:
            stripped = raw.strip()
            if not current and (not stripped or stripped.startswith("#")):
                continue
            if current and stripped.startswith("#"):
                continue  # comment lines inside a continued instruction
            if stripped.endswith("\\"):
                current += stripped[:-1] + " "
                continue
            lines.append(current + stripped)
            current = ""
    if current:
        lines.append(current)
    out, stage, index = [], None, -1
    for line in lines:
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            index += 1
            m = re.search(r"\bAS\s+(\S+)\s*$", rest, re.I)
            stage = m.group(1) if m else str(index)
        flags, args = {}, rest.strip()
        if word in ("COPY", "ADD"):
            parts = shlex.split(args)
            while parts and parts[0].startswith("--"):
                key, _, value = parts.pop(0)[2:].partition("=")
                flags[key] = value
            args = parts
        out.append((stage, word, flags, args))
    return out


def stages():
    return [s for (s, w, _, _) in dockerfile_instructions() if w == "FROM"]


# --- .dockerignore (Docker's rules: last matching pattern wins, `!` re-includes, a pattern
# matching a parent directory matches everything under it) -------------------------------

def dockerignore_patterns():
    patterns = []
    if os.path.exists(path(".dockerignore")):
        for line in open(path(".dockerignore")):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
            patterns.append((negate, re.compile(glob_to_regex(pattern))))
    return patterns


def glob_to_regex(pattern):
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            if pattern.startswith("/", i):
                out = out[:-2] + "(?:.*/)?"
                i += 1
            continue
        out += {"*": "[^/]*", "?": "[^/]"}.get(c, re.escape(c))
        i += 1
    return "^" + out + "$"


def excluded(rel, patterns):
    parts = rel.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for negate, regex in patterns:
        if any(regex.match(c) for c in candidates):
            result = not negate
    return result


def git_tracked():
    try:
        out = subprocess.run(
            ["git", "-C", ROOT, "ls-files", "-z"], capture_output=True, check=True
        ).stdout
        return set(p for p in out.decode().split("\0") if p)
    except (OSError, subprocess.CalledProcessError):
        return None


# --- Cargo workspace -------------------------------------------------------------------

def workspace():
    """{member dir: (package name, [binary names])}"""
    root = tomllib.load(open(path("Cargo.toml"), "rb"))
    members = {}
    for pattern in root.get("workspace", {}).get("members", []):
        for d in sorted(glob.glob(path(pattern))):
            manifest = os.path.join(d, "Cargo.toml")
            if not os.path.exists(manifest):
                continue
            data = tomllib.load(open(manifest, "rb"))
            package = data["package"]
            name = package["name"]
            bins = [b["name"] for b in data.get("bin", [])]
            if package.get("autobins", True):
                if os.path.exists(os.path.join(d, "src", "main.rs")):
                    bins.append(name)
                for f in glob.glob(os.path.join(d, "src", "bin", "*.rs")):
                    bins.append(os.path.basename(f)[:-3])
                for f in glob.glob(os.path.join(d, "src", "bin", "*", "main.rs")):
                    bins.append(os.path.basename(os.path.dirname(f)))
            members[os.path.relpath(d, ROOT)] = (name, sorted(set(bins)))
    return members


def compile_time_inputs(members):
    """Repository paths embedded by the sources: include_str!/include_bytes! (relative to
    the file) and sqlx::migrate! (relative to the crate; default `migrations`)."""
    inputs = set()
    include = re.compile(r"\binclude_(?:str|bytes)!\s*\(\s*\"([^\"]+)\"")
    migrate = re.compile(r"\bmigrate!\s*\(\s*(?:\"([^\"]*)\")?\s*\)")
    for member in members:
        for dirpath, dirs, files in os.walk(path(member)):
            dirs[:] = [d for d in dirs if d != "target"]
            for file in files:
                if not file.endswith(".rs"):
                    continue
                full = os.path.join(dirpath, file)
                text = open(full, encoding="utf-8", errors="replace").read()
                for m in include.finditer(text):
                    inputs.add(os.path.normpath(os.path.join(dirpath, m.group(1))))
                for m in migrate.finditer(text):
                    inputs.add(os.path.normpath(os.path.join(path(member), m.group(1) or "migrations")))
    return sorted(os.path.relpath(p, ROOT) for p in inputs)


# --- modes -----------------------------------------------------------------------------

def installed_binaries():
    """Binaries the Dockerfile copies into /usr/local/bin from another stage."""
    names = set()
    for _, word, flags, args in dockerfile_instructions():
        if word != "COPY" or "from" not in flags or len(args) < 2:
            continue
        *sources, dest = args
        if not dest.startswith("/usr/local/bin"):
            continue
        if dest.endswith("/") or len(sources) > 1:
            names.update(os.path.basename(src.rstrip("/")) for src in sources)
        else:
            names.add(os.path.basename(dest))
    return names


def compose_env(service):
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def mode_compose():
    compose = load_yaml(path("docker-compose.yml"))
    services = compose.get("services") or {}
    declared_volumes = set((compose.get("volumes") or {}).keys())
    binaries = installed_binaries()
    dockerfile_text = open(path("Dockerfile")).read()

    # Variables compose needs without a default must be in .env.example.
    text = open(path("docker-compose.yml")).read()
    text = "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#"))
    text = text.replace("$$", "")
    required, optional = set(), set()
    for m in re.finditer(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?+])?[^}]*\}|\$([A-Za-z_][A-Za-z0-9_]*)", text):
        name, op = m.group(1) or m.group(3), m.group(2) or ""
        (optional if op.endswith("-") or op.endswith("+") else required).add(name)
    example = {}
    if os.path.exists(path(".env.example")):
        for line in open(path(".env.example")):
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, _, value = line.partition("=")
                example[key.strip()] = value.strip()
    missing = sorted(required - set(example))
    if missing:
        fail(f".env.example lacks {', '.join(missing)} (used in docker-compose.yml without a default)")
    else:
        ok(f".env.example defines the variables compose requires: {', '.join(sorted(required))}")
    unused = sorted(set(example) - required - optional)
    if unused:
        fail(f".env.example sets {', '.join(unused)}, which docker-compose.yml never uses")

    before = len(failures)
    for name, svc in services.items():
        # depends_on targets exist
        deps = svc.get("depends_on") or {}
        for dep in (deps if isinstance(deps, list) else deps.keys()):
            if dep not in services:
                fail(f"{name}: depends_on unknown service {dep!r}")
        # named volumes are declared; remember mount points
        mounts = []
        for vol in svc.get("volumes") or []:
            if isinstance(vol, dict):
                source, target, kind = vol.get("source"), vol.get("target"), vol.get("type")
            else:
                parts = vol.split(":")
                source, target = (parts[0], parts[1]) if len(parts) > 1 else (None, parts[0])
                kind = "bind" if source and (source.startswith((".", "/", "~"))) else "volume"
            if kind == "volume" and source and source not in declared_volumes:
                fail(f"{name}: volume {source!r} is not declared under top-level volumes")
            if kind == "bind" and source and not os.path.exists(path(source)):
                fail(f"{name}: bind-mounted {source} does not exist")
            mounts.append((kind, source, target))
        if "build" not in svc:
            continue
        # the command is a binary the image installs
        command = svc.get("command")
        if command is None:
            fail(f"{name}: builds the chat image but sets no command (the image has none)")
        else:
            argv = command if isinstance(command, list) else shlex.split(command)
            if argv[0] in binaries:
                ok(f"{name}: command {' '.join(argv)!r} runs /usr/local/bin/{argv[0]}")
            else:
                fail(f"{name}: command {argv[0]!r} is not one of the image's binaries {sorted(binaries)}")
        env = compose_env(svc)
        # listeners bind all interfaces, on the port the healthcheck probes
        test = svc.get("healthcheck", {}).get("test")
        test = " ".join(test) if isinstance(test, list) else str(test or "")
        for key, value in env.items():
            if key.endswith("_LISTEN"):
                m = re.fullmatch(r"(.*):(\d+)", value)
                if not m or m.group(1) not in ("0.0.0.0", "[::]"):
                    fail(f"{name}: {key}={value} is not reachable from other containers (use 0.0.0.0:<port>)")
                elif f":{m.group(2)}/" not in test:
                    fail(f"{name}: healthcheck {test!r} does not probe port {m.group(2)} ({key})")
                else:
                    ok(f"{name}: {key}={value}, healthcheck probes it")
        # data files lie on a volume; the image creates the mount point (chat-owned)
        for key in ("LOG_FILE", "DATABASE_URL"):
            if key not in env:
                continue
            file = re.sub(r"^sqlite:(//)?", "", env[key]).split("?")[0]
            if not file.startswith("/"):
                fail(f"{name}: {key}={env[key]} is relative; use an absolute path on a volume")
                continue
            on = [t for (k, s, t) in mounts if file.startswith(t.rstrip("/") + "/")]
            if not on:
                fail(f"{name}: {key} file {file} is on no volume: lost when the container is re-created")
            elif on[0] not in dockerfile_text:
                fail(f"{name}: the Dockerfile does not create {on[0]}: a new volume there would be root-owned")
            else:
                ok(f"{name}: {key} {file} is on a volume mounted at {on[0]}, created by the image")
    if len(failures) == before:
        ok("all services: depends_on targets, named volumes and bind mounts exist")


def mode_nginx_prep(tmp):
    """Writes the testable copy to tmp/nginx.conf; prints the upstream map for the cross-check."""
    text = open(path("deploy", "nginx.conf")).read()
    upstreams = {}

    def server_line(m):
        host, port = m.group(2), m.group(3)
        if re.fullmatch(r"[\d.]+|\[[0-9a-fA-F:]+\]", host):
            return m.group(0)
        upstreams.setdefault(host, set()).add(port)
        return f"{m.group(1)}127.0.0.1:{port}"

    # `server host:port` inside upstream blocks (a `server {` block has no host:port).
    text = re.sub(r"(?m)^(\s*server\s+)([A-Za-z0-9_.\-\[\]:]+?):(\d+)(?=[\s;])", server_line, text)
    m = re.search(r"(?m)^\s*user\s+([^\s;]+)[^;]*;", text)
    if m:
        import pwd

        try:
            pwd.getpwnam(m.group(1))
        except KeyError:
            text = text.replace(m.group(0), f"# (check) user {m.group(1)} does not exist here")
            print(f"  note  dropped `user {m.group(1)};` (no such user on this host)")
    text = re.sub(r"(?m)^(\s*pid\s+)[^;]+;", rf"\g<1>{tmp}/nginx.pid;", text)
    text = re.sub(r"(?m)^(\s*error_log\s+)\S+", rf"\g<1>{tmp}/error.log", text)
    text = re.sub(r"(?m)^(\s*access_log\s+)(?!off\b)\S+?(?=[\s;])", rf"\g<1>{tmp}/access.log", text)
    open(os.path.join(tmp, "nginx.conf"), "w").write(text)
    for host, ports in sorted(upstreams.items()):
        print(f"  note  upstream host {host}:{','.join(sorted(ports))} -> 127.0.0.1 for the test")
    # cross-check with compose
    compose = load_yaml(path("docker-compose.yml"))
    services = compose.get("services") or {}
    proxy = [n for n, s in services.items()
             if any("nginx.conf" in str(v) for v in s.get("volumes") or [])]
    if len(proxy) != 1:
        fail(f"expected one compose service mounting deploy/nginx.conf, found {proxy}")
        return
    proxy_name, proxy_svc = proxy[0], services[proxy[0]]
    mounts = [str(v) for v in proxy_svc.get("volumes") or []]
    if any(v.split(":")[0] in ("./deploy/nginx.conf", "deploy/nginx.conf") for v in mounts):
        ok(f"{proxy_name} mounts deploy/nginx.conf")
    else:
        fail(f"{proxy_name} does not mount ./deploy/nginx.conf: {mounts}")
    deps = proxy_svc.get("depends_on") or {}
    for host, ports in sorted(upstreams.items()):
        if host not in services:
            fail(f"nginx upstream host {host!r} is not a compose service")
            continue
        if host not in deps:
            fail(f"{proxy_name} does not depend_on upstream {host!r}")
        listen_ports = {v.rsplit(":", 1)[-1] for k, v in compose_env(services[host]).items()
                        if k.endswith("_LISTEN")}
        if listen_ports and not ports <= listen_ports:
            fail(f"nginx sends to {host}:{sorted(ports)} but it listens on {sorted(listen_ports)}")
        else:
            ok(f"upstream {host}:{','.join(sorted(ports))} is a compose service the proxy depends on")
    listen = set(re.findall(r"(?m)^\s*listen\s+(?:[^\s;]*:)?(\d+)", text))
    published = set()
    for p in proxy_svc.get("ports") or []:
        if isinstance(p, dict):
            published.add(str(p.get("target")))
        else:
            published.add(re.sub(r"/\w+$", "", str(p)).rsplit(":", 1)[-1])
    if listen and listen <= published:
        ok(f"{proxy_name} publishes the port(s) nginx listens on: {', '.join(sorted(listen))}")
    else:
        fail(f"nginx listens on {sorted(listen)} but {proxy_name} publishes container ports {sorted(published)}")


def mode_dockerfile():
    instructions = dockerfile_instructions()
    names = stages()
    patterns = dockerignore_patterns()
    tracked = git_tracked()
    members = workspace()
    all_bins = {b: pkg for (pkg, bins) in members.values() for b in bins}
    context_sources, checked = [], 0
    for stage, word, flags, args in instructions:
        if word not in ("COPY", "ADD") or len(args) < 2:
            continue
        sources = args[:-1]
        if "from" in flags:
            if flags["from"] not in names:
                fail(f"COPY --from={flags['from']}: no such stage (stages: {names})")
            for src in sources:
                m = re.search(r"/target/(?:[^/]+/)?release/([^/]+)$", src)
                if m:
                    if m.group(1) in all_bins:
                        ok(f"copies binary {m.group(1)} (package {all_bins[m.group(1)]}) out of target/release")
                    else:
                        fail(f"copies {src}, but {m.group(1)!r} is no binary of the workspace {sorted(all_bins)}")
            continue
        for src in sources:
            if re.match(r"^[a-z]+://", src):
                continue
            rel = os.path.normpath(src).lstrip("/")
            matches = glob.glob(path(rel))
            if not matches:
                fail(f"{word} {src}: no such path in the repository")
                continue
            context_sources.append(rel)
            for match in matches:
                files = [match]
                if os.path.isdir(match):
                    files = [os.path.join(d, f) for d, dirs, fs in os.walk(match)
                             for f in fs if "target" not in os.path.relpath(d, ROOT).split(os.sep)]
                for file in files:
                    r = os.path.relpath(file, ROOT)
                    if (tracked is None or r in tracked) and excluded(r, patterns):
                        fail(f"{word} {src}: {r} is excluded from the build context by .dockerignore")
                    checked += 1
    ok(f"every COPY source exists and is in the build context ({len(context_sources)} sources, {checked} files)")

    def copied(rel):
        return any(rel == s or rel.startswith(s.rstrip("/") + "/") or s == "." for s in context_sources)

    for want in ("Cargo.toml", "Cargo.lock"):
        (ok if copied(want) else fail)(f"copies {want}")
    for member, (pkg, _) in sorted(members.items()):
        manifest = f"{member}/Cargo.toml"
        if manifest in context_sources:
            ok(f"copies {manifest} on its own (dependency layer)")
        else:
            fail(f"does not copy {manifest} before the sources: the dependency layer needs it")
        (ok if copied(f"{member}/src") else fail)(f"copies the sources of {member}")
    for rel in compile_time_inputs(members):
        (ok if copied(rel) else fail)(f"copies {rel} (embedded at compile time)")
    builds = [" ".join(a) if isinstance(a, list) else a for (_, w, _, a) in instructions
              if w == "RUN" and "cargo build" in (a if isinstance(a, str) else "")]
    if builds and all("--locked" in b for b in builds):
        ok("cargo build runs with --locked")
    else:
        fail("every `cargo build` in the Dockerfile must use --locked")
    last_stage = instructions[-1][0]
    users = [a for (s, w, _, a) in instructions if s == last_stage and w == "USER"]
    if users and users[-1].split(":")[0] not in ("root", "0"):
        ok(f"the runtime stage runs as USER {users[-1]}")
    else:
        fail("the runtime stage must set a non-root USER")
    if os.path.exists(path(".env.example")):
        if excluded(".env", patterns):
            ok(".dockerignore keeps .env out of the build context")
        else:
            fail(".dockerignore must exclude .env (secrets)")


mode = sys.argv[1]
if mode == "compose":
    mode_compose()
elif mode == "nginx-prep":
    mode_nginx_prep(sys.argv[2])
elif mode == "dockerfile":
    mode_dockerfile()
sys.exit(1 if failures else 0)
PYTHON
}

status=0

section "1. docker-compose.yml: Compose specification schema"
if "$PY" -m check_jsonschema --builtin-schema vendor.compose-spec docker-compose.yml; then
    echo "  ok    docker-compose.yml is valid against the Compose specification"
else
    echo "  FAIL  docker-compose.yml does not match the Compose specification"
    status=1
fi
section "1. docker-compose.yml: cross-checks"
pycheck compose || status=1

section "2. deploy/nginx.conf: nginx -t ($("$NGINX" -v 2>&1 | sed 's/^nginx version: //'))"
if pycheck nginx-prep "$TMP"; then :; else status=1; fi
if "$NGINX" -t -q -p "$TMP" -e "$TMP/error.log" -c "$TMP/nginx.conf" 2>"$TMP/nginx-t.log"; then
    echo "  ok    nginx -t: syntax is ok"
else
    # The copy keeps deploy/nginx.conf's line numbers.
    sed 's/^/        /' "$TMP/nginx-t.log"
    echo "  FAIL  nginx -t rejects deploy/nginx.conf"
    status=1
fi

section "3. Dockerfile against the repository"
pycheck dockerfile || status=1

echo
if [ "$status" -eq 0 ]; then
    echo "check-compose: all checks passed"
else
    echo "check-compose: FAILED (see FAIL lines above)"
fi
exit "$status"
