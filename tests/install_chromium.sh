#!/usr/bin/env bash
# Debian's chromium and chromedriver, which the demo's headless-browser test drives
# (tests/test_demo.py through tests/headless_chromium.py). Nothing to do when both are on the
# PATH already; otherwise apt-get installs them (as root, or through sudo).
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo=sudo
fi
$sudo apt-get update -q
$sudo apt-get install -y -q chromium chromium-driver
