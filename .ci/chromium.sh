#!/usr/bin/env bash
# Install Debian's chromium for the browser test of the report (tests/test_report_browser.py).
# Idempotent: does nothing when a chromium binary is already on PATH.
#   .ci/chromium.sh
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  echo "chromium already installed: $(command -v chromium)"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
echo "installed $(command -v chromium): $(chromium --version 2>/dev/null || true)"
