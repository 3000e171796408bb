#!/bin/sh
# Install what tests/test_report_browser.py needs, when missing: Debian's headless Chromium
# (chromium-headless-shell) and Playwright for Python, which drives it. Idempotent; never runs
# `playwright install` (the test uses the Debian binary, so no browser download is needed).
# Needs root (or sudo) for apt-get. Measured here: apt-get about 63 s (115 new packages),
# pip about 22 s.
set -eu

if [ ! -x /usr/lib/chromium/chromium-headless-shell ] && ! command -v chromium-headless-shell >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium-headless-shell
fi

python="${PYTHON:-python}"
if ! "$python" -c "import playwright.sync_api" 2>/dev/null; then
    "$python" -m pip install --quiet playwright
fi
echo "browser test ready: $(/usr/lib/chromium/chromium-headless-shell --version 2>/dev/null || chromium-headless-shell --version)"
