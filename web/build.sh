#!/usr/bin/env bash
# Builds the page into web/dist/: the library compiled to wasm32 (release), wasm-bindgen's JS glue
# in dist/pkg/, and the static files of web/www/. Installs what is missing: the wasm32 target
# (rustup) and wasm-bindgen-cli at exactly the version Cargo.lock pins for the wasm-bindgen crate.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    rustup target add wasm32-unknown-unknown
fi
want=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
have=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have" != "$want" ]; then
    echo "installing wasm-bindgen-cli $want (found: ${have:-none})"
    # Not --locked: the CLI's own lock file may name crates newer than a mirror holds.
    cargo install -q wasm-bindgen-cli --version "$want"
fi
cargo build -q -p wgvae-web --target wasm32-unknown-unknown --release
rm -rf web/dist
mkdir -p web/dist
wasm-bindgen --target web --no-typescript --out-dir web/dist/pkg target/wasm32-unknown-unknown/release/wgvae_web.wasm
cp web/www/* web/dist/
echo "built web/dist ($(du -sh web/dist/pkg/wgvae_web_bg.wasm | cut -f1) of wasm)"
