#!/usr/bin/env bash
# The browser build of the analysis maths: crates/wasm (crates/maths through wasm-bindgen)
# → packages/report/wasm/{loralab_wasm.js, loralab_wasm_bg.wasm}. Run by `bun run build:wasm`
# (scripts/build-wasm.ts, which the test command calls when the Rust is newer than the module);
# never by a report, which only loads the module.
#
# The toolchain, in this order:
#  1. rustup's Rust with the wasm32-unknown-unknown target (`rustup target add
#     wasm32-unknown-unknown`, no root; macOS and any Linux): used when installed.
#  2. Otherwise, on Debian/Ubuntu, Debian's Rust for the web (rustc-web, cargo-web, with wasm32
#     in its target list and its own rust-lld), std's sources (rust-web-src) and LLVM's linker
#     (lld-22, behind Debian's rust-lld), installed with apt-get when missing (root or sudo),
#     rebuilding std for wasm32 with -Z build-std (RUSTC_BOOTSTRAP=1 lets a stable compiler take
#     -Z flags); std's own dependencies come from crates.io. For machines whose rustup cannot
#     download targets.
#  Either way, wasm-bindgen-cli from crates.io at exactly the wasm-bindgen version crates/wasm
#  pins, built once with rustup's cargo into $LORALAB_CACHE.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=packages/report/wasm
CACHE="${LORALAB_CACHE:-$HOME/.cache/loralab}"
VERSION=$(sed -n 's/^wasm-bindgen = "=\(.*\)"/\1/p' crates/wasm/Cargo.toml)
[ -n "$VERSION" ] || { echo "error: crates/wasm/Cargo.toml must pin wasm-bindgen with =X.Y.Z" >&2; exit 1; }

if rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  TOOLCHAIN=rustup
else
  TOOLCHAIN=debian
  command -v dpkg-query >/dev/null || { echo "error: no wasm32 Rust target (hint: rustup target add wasm32-unknown-unknown)" >&2; exit 1; }
  missing=()
  # lld-22: Debian's rust-lld is a link to it, and rust-web-llvm does not pull it in
  for p in rustc-web cargo-web rust-web-src lld-22; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "== apt-get install ${missing[*]} (Debian's Rust with the wasm32 target)"
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get install -y -q "${missing[@]}" || { $SUDO apt-get update -q && $SUDO apt-get install -y -q "${missing[@]}"; }
  fi
fi

BINDGEN="$CACHE/wasm-bindgen-$VERSION/bin/wasm-bindgen"
if [ ! -x "$BINDGEN" ]; then
  echo "== cargo install wasm-bindgen-cli $VERSION (once per machine; a few minutes)"
  # not --locked: its lock file names a webpki-roots this registry does not serve
  cargo install --quiet wasm-bindgen-cli --version "$VERSION" --root "$CACHE/wasm-bindgen-$VERSION"
fi

if [ "$TOOLCHAIN" = rustup ]; then
  echo "== cargo build crates/wasm for wasm32-unknown-unknown (rustup's target)"
  cargo build --quiet --release --manifest-path crates/wasm/Cargo.toml --target-dir target/wasm --target wasm32-unknown-unknown
else
  echo "== cargo build crates/wasm for wasm32-unknown-unknown (Debian's Rust, build-std)"
  PATH="/usr/bin:$PATH" RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 RUSTFLAGS="-C linker=rust-lld" \
    /usr/bin/cargo build --quiet --release --manifest-path crates/wasm/Cargo.toml --target-dir target/wasm \
    --target wasm32-unknown-unknown -Z build-std=std,panic_abort
fi

mkdir -p "$OUT"
"$BINDGEN" --target web --no-typescript --out-dir "$OUT" target/wasm/wasm32-unknown-unknown/release/loralab_wasm.wasm
echo "== $OUT: $(stat -c %s "$OUT/loralab_wasm_bg.wasm") bytes of wasm"
