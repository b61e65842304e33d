#!/usr/bin/env bash
# Install Debian's chromium and chromedriver for the dashboard's browser test
# (tests/e2e/test_dashboard_browser.py), when they are missing and this machine can:
# apt-get as root (or password-less sudo). Never downloads a browser build of its own.
#
# Always exits 0: without a browser the test skips and says why.
set -u

have_browser() {
  { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; } \
    && command -v chromedriver >/dev/null 2>&1
}

say() { printf 'install-browser: %s\n' "$*" >&2; }

if have_browser; then
  say "$( (chromium --version || chromium-browser --version) 2>/dev/null | head -n1) and chromedriver present"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  say "no apt-get here: install chromium and chromedriver yourself to run the browser test"
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    say "not root and no password-less sudo: run 'sudo apt-get install chromium chromium-driver'"
    exit 0
  fi
fi
say "installing chromium and chromium-driver with apt-get"
if $SUDO apt-get update -qq >/dev/null \
  && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    chromium chromium-driver fonts-dejavu-core >/dev/null; then
  say "$(chromium --version 2>/dev/null | head -n1) installed"
else
  say "apt-get could not install chromium; the browser test will be skipped"
fi
exit 0
