#!/usr/bin/env bash
# The browser stage on its own: builds the native binary and the page, then runs
# web/browser_test.py (headless Chromium on WebGPU through chromedriver). Installs chromium and
# chromium-driver with apt when they are missing (as root, on Debian/Ubuntu).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromedriver >/dev/null || ! command -v chromium >/dev/null; then
    apt-get install -y -q chromium chromium-driver >/dev/null
fi
cargo build -q --release --bin wgvae
bash web/build.sh
python3 web/browser_test.py "$@"
