#!/usr/bin/env bash
# Checks a built spipes .deb without installing it:
#
#   bash packaging/check-deb.sh [PATH.deb]
#
# Without an argument it checks cargo's target/debian/spipes_VERSION-*.deb
# for the version in Cargo.toml. It asserts the control fields, the
# conffiles, the maintainer scripts and every file the package must ship
# (dpkg-deb -I, -f, -c), then extracts the package into a temp dir and
# runs the extracted binary: `check -c etc/spipes.toml` must exit 0 and
# list no pipe, and `--version` must print the package's version. Every
# miss is reported; the exit status is 1 if there was any.
set -euo pipefail
cd "$(dirname "$0")/.."

fail=0
miss() {
    printf 'check-deb: FAIL: %s\n' "$*" >&2
    fail=1
}
ok() { printf 'check-deb: ok: %s\n' "$*"; }

version=$(sed -n 's/^version = "\([^"]*\)"$/\1/p' Cargo.toml | head -n 1)
if [ -z "$version" ]; then
    echo "check-deb: cannot read the version from Cargo.toml" >&2
    exit 1
fi

deb=${1:-}
if [ -z "$deb" ]; then
    target_dir=$(cargo metadata --format-version 1 --no-deps |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    deb=$(ls -t "$target_dir"/debian/spipes_"$version"-*.deb 2>/dev/null |
        head -n 1 || true)
    if [ -z "$deb" ]; then
        echo "check-deb: no $target_dir/debian/spipes_$version-*.deb;" \
            "run packaging/build-deb.sh first" >&2
        exit 1
    fi
fi
if [ ! -f "$deb" ]; then
    echo "check-deb: $deb: no such file" >&2
    exit 1
fi
echo "check-deb: checking $deb"

# ---------------------------------------------------------------------
# Control fields
# ---------------------------------------------------------------------

field() { dpkg-deb -f "$deb" "$1"; }
expect_field() {
    local got
    got=$(field "$1")
    if [ "$got" = "$2" ]; then
        ok "$1: $got"
    else
        miss "$1 is '$got', expected '$2'"
    fi
}
expect_field Package spipes
expect_field Section net
expect_field Priority optional
expect_field Architecture "$(dpkg --print-architecture)"
deb_version=$(field Version)
case "$deb_version" in
"$version"-*) ok "Version: $deb_version" ;;
*) miss "Version is '$deb_version', expected $version-REVISION" ;;
esac
for f in Maintainer Description Depends; do
    if [ -n "$(field "$f")" ]; then
        ok "$f is set"
    else
        miss "control field $f is empty"
    fi
done
if field Depends | grep -q 'libc6'; then
    ok "Depends names libc6 (from \$auto)"
else
    miss "Depends lacks libc6: \$auto did not resolve shared libraries"
fi
if [ "$(dpkg-deb -f "$deb" Description | wc -l)" -ge 3 ]; then
    ok "Description has an extended description"
else
    miss "Description has no extended description"
fi

# ---------------------------------------------------------------------
# Control archive: conffiles and maintainer scripts
# ---------------------------------------------------------------------

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dpkg-deb -e "$deb" "$work/DEBIAN"

if grep -qx '/etc/spipes.toml' "$work/DEBIAN/conffiles" 2>/dev/null; then
    ok "/etc/spipes.toml is a conffile"
else
    miss "/etc/spipes.toml is not listed in conffiles"
fi
if [ -f "$work/DEBIAN/conffiles" ] &&
    [ "$(sort "$work/DEBIAN/conffiles" | uniq -d)" != "" ]; then
    miss "conffiles lists a path twice"
fi

for script in postinst prerm postrm; do
    path=$work/DEBIAN/$script
    if [ ! -f "$path" ]; then
        miss "maintainer script $script is missing"
    elif [ ! -x "$path" ]; then
        miss "maintainer script $script is not executable"
    elif ! sh -n "$path"; then
        miss "maintainer script $script has a shell syntax error"
    else
        ok "maintainer script $script"
    fi
done
if grep -q '#DEBHELPER#' "$work"/DEBIAN/post* "$work"/DEBIAN/pre* 2>/dev/null; then
    miss "a maintainer script still holds the #DEBHELPER# token"
fi
if grep -q 'useradd\|systemd-sysusers' "$work/DEBIAN/postinst" &&
    grep -q '/etc/spipes/keys' "$work/DEBIAN/postinst" &&
    grep -q 'deb-systemd-helper' "$work/DEBIAN/postinst"; then
    ok "postinst makes the user and /etc/spipes/keys and enables the unit"
else
    miss "postinst lacks the user, the keys folder or the unit's enabling"
fi

# ---------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------

listing=$work/listing
dpkg-deb -c "$deb" >"$listing"

# PATH MODE: the file must be in the package, a regular file of that mode.
expect_file() {
    local path=$1 mode=$2 line
    line=$(awk -v p="./$path" '$6 == p' "$listing")
    if [ -z "$line" ]; then
        miss "not in the package: /$path"
        return
    fi
    case "$line" in
    "$mode "*) ok "/$path (${line%% *})" ;;
    *) miss "/$path has mode ${line%% *}, expected $mode" ;;
    esac
}
expect_file usr/bin/spipes -rwxr-xr-x
expect_file usr/lib/systemd/system/spipes.service -rw-r--r--
expect_file usr/lib/systemd/system/spipes.socket -rw-r--r--
expect_file usr/lib/sysusers.d/spipes.conf -rw-r--r--
expect_file usr/share/spipes/systemd-252.conf -rw-r--r--
expect_file etc/spipes.toml -rw-r--r--
expect_file usr/share/doc/spipes/README.md -rw-r--r--
expect_file usr/share/doc/spipes/copyright -rw-r--r--
expect_file usr/share/man/man1/spipes.1.gz -rw-r--r--
expect_file usr/share/bash-completion/completions/spipes -rw-r--r--
expect_file usr/share/zsh/vendor-completions/_spipes -rw-r--r--
expect_file usr/share/fish/vendor_completions.d/spipes.fish -rw-r--r--

if awk '{print $2}' "$listing" | grep -qv '^root/root$\|^0/0$'; then
    miss "files not owned by root in the package"
else
    ok "every file is owned by root"
fi

# ---------------------------------------------------------------------
# Extracted contents
# ---------------------------------------------------------------------

root=$work/root
dpkg-deb -x "$deb" "$root"

unit=$root/usr/lib/systemd/system/spipes.service
if [ -f "$unit" ]; then
    for want in 'Type=notify-reload' \
        'ExecStart=/usr/bin/spipes run -c /etc/spipes.toml' \
        'User=spipes' 'RuntimeDirectory=spipes'; do
        if grep -qx "$want" "$unit"; then
            ok "spipes.service: $want"
        else
            miss "spipes.service lacks the line $want"
        fi
    done
fi

if [ -f "$root/usr/share/man/man1/spipes.1.gz" ]; then
    if gzip -dc "$root/usr/share/man/man1/spipes.1.gz" | grep -q '^\.TH'; then
        ok "the man page is gzipped roff"
    else
        miss "usr/share/man/man1/spipes.1.gz is not gzipped roff (.TH)"
    fi
fi
for f in usr/share/bash-completion/completions/spipes \
    usr/share/zsh/vendor-completions/_spipes \
    usr/share/fish/vendor_completions.d/spipes.fish; do
    if [ -f "$root/$f" ] && ! grep -q 'spipes' "$root/$f"; then
        miss "/$f does not mention spipes"
    fi
done
if [ -f "$root/usr/share/bash-completion/completions/spipes" ] &&
    ! bash -n "$root/usr/share/bash-completion/completions/spipes"; then
    miss "the bash completion has a syntax error"
fi

bin=$root/usr/bin/spipes
if [ -x "$bin" ]; then
    if command -v readelf >/dev/null &&
        readelf -S "$bin" | grep -q '\.debug_info'; then
        miss "/usr/bin/spipes still has debug info (not stripped)"
    fi

    if out=$(cd "$root" && ./usr/bin/spipes check -c etc/spipes.toml 2>&1); then
        if [ -z "$out" ]; then
            ok "spipes check -c etc/spipes.toml: exit 0, no pipes"
        else
            miss "spipes check on the shipped config printed:" "$out"
        fi
    else
        miss "spipes check -c etc/spipes.toml failed ($?):" "$out"
    fi

    if out=$("$bin" --version 2>&1); then
        if [ "$out" = "spipes $version" ]; then
            ok "spipes --version: $out"
        else
            miss "spipes --version printed '$out', expected 'spipes $version'"
        fi
    else
        miss "spipes --version failed: $out"
    fi
fi

if [ "$fail" -ne 0 ]; then
    echo "check-deb: $deb FAILED" >&2
    exit 1
fi
echo "check-deb: $deb passed"
