#!/usr/bin/env bash
# Builds the Debian package of spipes with cargo-deb and prints its path.
#
#   bash packaging/build-deb.sh
#
# 1. cargo build --release (honours CARGO_TARGET_DIR);
# 2. generates, with the binary just built, the man page
#    target/packaging/spipes.1 and the bash, zsh and fish completions in
#    target/packaging/completions/ (the assets in Cargo.toml's
#    [package.metadata.deb] name these paths, relative to the repository);
# 3. cargo deb --no-build, which packs them with the unit files and the
#    maintainer scripts from packaging/.
#
# cargo-deb is installed with `cargo install cargo-deb --locked` when
# missing; that compiles it from crates.io and takes several minutes.
# The last line of standard output is the path of the .deb; progress goes
# to standard error.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'build-deb: %s\n' "$*" >&2; }

if ! cargo deb --version >/dev/null 2>&1; then
    log "cargo-deb is missing; installing it (cargo install cargo-deb --locked)"
    started=$SECONDS
    cargo install cargo-deb --locked
    log "cargo-deb installed in $((SECONDS - started)) s"
fi

log "building the release binary"
cargo build --release --locked --bin spipes

# Where cargo put it: CARGO_TARGET_DIR, a config's build.target-dir, or
# target/. cargo metadata knows.
target_dir=$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
if [ -z "$target_dir" ]; then
    log "cannot find cargo's target directory"
    exit 1
fi
bin=$target_dir/release/spipes
if [ ! -x "$bin" ]; then
    log "no binary at $bin after the build"
    exit 1
fi

# Generated assets: always under ./target/packaging, whatever the target
# directory, since that is where Cargo.toml's asset list points.
out=target/packaging
rm -rf "$out"
mkdir -p "$out/completions"
"$bin" man >"$out/spipes.1"
"$bin" completions bash >"$out/completions/spipes.bash"
"$bin" completions zsh >"$out/completions/_spipes"
"$bin" completions fish >"$out/completions/spipes.fish"
for f in "$out/spipes.1" "$out"/completions/*; do
    if [ ! -s "$f" ]; then
        log "generated $f is empty"
        exit 1
    fi
done
log "generated the man page and completions in $out"

log "packing with cargo deb"
# It prints the path of each file it wrote: the .deb, and the
# spipes-dbgsym .ddeb with the debug line tables (dbgsym = true).
written=$(cargo deb --no-build --locked)
deb=$(printf '%s\n' "$written" | grep '\.deb$' | tail -n 1 || true)
if [ -z "$deb" ] || [ ! -f "$deb" ]; then
    log "cargo deb did not report a .deb (it printed: $written)"
    exit 1
fi
ddeb=$(printf '%s\n' "$written" | grep '\.ddeb$' | tail -n 1 || true)
if [ -n "$ddeb" ]; then
    log "debug symbols: $ddeb"
fi
echo "$deb"
