#!/usr/bin/env bash
# Checks the systemd files in packaging/systemd/ with the installed
# systemd's own tools, without installing anything:
#
#   bash packaging/verify-unit.sh [PATH-TO-SPIPES-BINARY]
#
# - systemd-analyze verify on spipes.service and spipes.socket. verify
#   wants the ExecStart= binary to exist, so it runs on copies in a temp
#   dir whose ExecStart= names the built binary (the argument, else cargo's
#   target/release/spipes, built with `cargo build --release` if missing);
#   nothing goes to /usr/bin. verify exits 0 on many problems it only
#   warns about (an unknown key, a value it cannot parse), so any output
#   at all counts as a failure.
# - On systemd 252 and older, which do not know Type=notify-reload: the
#   unit as shipped may draw that one warning and nothing else, and the
#   variant those versions really run (the unit plus the drop-in
#   systemd-252.conf that the package links, Type=notify with
#   ExecReload=) must verify cleanly. On 253 and newer, both the unit and
#   the unit plus the drop-in must verify cleanly.
# - systemd-analyze security --offline=yes on the variant this systemd
#   runs: prints the exposure score, and fails above
#   SPIPES_MAX_EXPOSURE (default 2.0).
# - systemd-sysusers --dry-run on spipes.sysusers, in an empty root.
#
# Exits 1 on any failure, after running every check.
set -euo pipefail
cd "$(dirname "$0")/.."

src=packaging/systemd
max_exposure=${SPIPES_MAX_EXPOSURE:-2.0}
fail=0
miss() {
    printf 'verify-unit: FAIL: %s\n' "$*" >&2
    fail=1
}
ok() { printf 'verify-unit: ok: %s\n' "$*"; }

for tool in systemd-analyze systemd-sysusers; do
    if ! command -v "$tool" >/dev/null; then
        echo "verify-unit: $tool is missing (Debian package systemd)" >&2
        exit 1
    fi
done

bin=${1:-}
if [ -z "$bin" ]; then
    target_dir=$(cargo metadata --format-version 1 --no-deps |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    bin=$target_dir/release/spipes
    if [ ! -x "$bin" ]; then
        echo "verify-unit: building $bin" >&2
        cargo build --release --locked --bin spipes
    fi
fi
if [ ! -x "$bin" ]; then
    echo "verify-unit: $bin is not an executable" >&2
    exit 1
fi
bin=$(realpath "$bin")

version=$(systemd-analyze --version | sed -n '1s/^systemd \([0-9][0-9]*\).*/\1/p')
if [ -z "$version" ]; then
    echo "verify-unit: cannot read systemd's version" >&2
    exit 1
fi
echo "verify-unit: systemd $version, ExecStart=$bin"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A folder holding the units as the package installs them, with
# ExecStart= pointing at $bin; with "dropin", also the systemd-252 drop-in
# (systemd-analyze loads NAME.service.d/ beside the unit file); with
# "no-type", without the Type=notify-reload line, as systemd 252 in effect
# reads it.
stage() {
    local dir=$work/$1
    shift
    mkdir -p "$dir"
    sed "s|^ExecStart=/usr/bin/spipes |ExecStart=$bin |" \
        "$src/spipes.service" >"$dir/spipes.service"
    cp "$src/spipes.socket" "$dir/spipes.socket"
    for option in "$@"; do
        case "$option" in
        dropin)
            mkdir -p "$dir/spipes.service.d"
            cp "$src/systemd-252.conf" "$dir/spipes.service.d/"
            ;;
        no-type) sed -i '/^Type=notify-reload$/d' "$dir/spipes.service" ;;
        esac
    done
    if grep -q '^ExecStart=/usr/bin/' "$dir/spipes.service"; then
        echo "verify-unit: could not point ExecStart= at $bin" >&2
        exit 1
    fi
    echo "$dir"
}

# Runs verify on a staged folder; prints its output, sets $out.
run_verify() {
    local dir=$1 rc=0
    # --man=no: the man page is not installed here.
    out=$(cd "$dir" && systemd-analyze verify --man=no \
        ./spipes.service ./spipes.socket 2>&1) || rc=$?
    if [ -n "$out" ]; then
        printf '%s\n' "$out" | sed 's/^/    /'
    fi
    return "$rc"
}

# verify must exit 0 and print nothing.
expect_clean() {
    local what=$1 dir=$2 rc=0
    run_verify "$dir" || rc=$?
    if [ "$rc" -ne 0 ]; then
        miss "$what: systemd-analyze verify exited $rc"
    elif [ -n "$out" ]; then
        miss "$what: systemd-analyze verify warned (see above)"
    else
        ok "$what: systemd-analyze verify is clean"
    fi
}

if [ "$version" -lt 253 ]; then
    # As shipped: only the unknown type may be reported.
    rc=0
    run_verify "$(stage shipped)" || rc=$?
    other=$(printf '%s\n' "$out" | grep -v \
        'Failed to parse service type, ignoring: notify-reload$' || true)
    if [ "$rc" -ne 0 ] || [ -n "$other" ]; then
        miss "the unit as shipped: more than the notify-reload warning" \
            "(exit $rc)"
    else
        ok "the unit as shipped: only the expected notify-reload warning" \
            "on systemd $version"
    fi
    effective=$(stage effective no-type dropin)
    expect_clean "the unit with the systemd-252 drop-in" "$effective"
else
    effective=$(stage shipped)
    expect_clean "the unit as shipped" "$effective"
    expect_clean "the unit with the systemd-252 drop-in" \
        "$(stage with-dropin dropin)"
fi

# Hardening score of what this systemd runs.
rc=0
security=$(cd "$effective" && systemd-analyze security --offline=yes \
    --threshold="$(awk -v m="$max_exposure" 'BEGIN { print int(m * 10) }')" \
    ./spipes.service 2>&1) || rc=$?
score=$(printf '%s\n' "$security" |
    sed -n 's/.*Overall exposure level for spipes.service: \([0-9.]*\).*/\1/p')
if [ -z "$score" ]; then
    printf '%s\n' "$security" | sed 's/^/    /'
    miss "systemd-analyze security printed no exposure level"
elif [ "$rc" -ne 0 ]; then
    printf '%s\n' "$security" | grep '✗' | sed 's/^/    /' || true
    miss "exposure $score is above $max_exposure (SPIPES_MAX_EXPOSURE)"
else
    ok "systemd-analyze security: exposure $score (at most $max_exposure)"
fi

# The sysusers.d entry, installed in an empty root and applied there by
# name, as postinst does, without writing.
rc=0
mkdir -p "$work/root/etc" "$work/root/usr/lib/sysusers.d"
cp "$src/spipes.sysusers" "$work/root/usr/lib/sysusers.d/spipes.conf"
sysusers=$(systemd-sysusers --root="$work/root" --dry-run spipes.conf 2>&1) ||
    rc=$?
if [ "$rc" -ne 0 ] || ! printf '%s\n' "$sysusers" | grep -q "user 'spipes'"; then
    printf '%s\n' "$sysusers" | sed 's/^/    /'
    miss "systemd-sysusers rejects spipes.sysusers (exit $rc)"
else
    ok "spipes.sysusers makes the user and group spipes"
fi

if [ "$fail" -ne 0 ]; then
    echo "verify-unit: FAILED" >&2
    exit 1
fi
echo "verify-unit: passed"
