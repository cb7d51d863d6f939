#!/usr/bin/env bash
# Debian's Chromium for the live viewer's end-to-end test (tests/test_viewer.py, driven by Playwright
# with executablePath=/usr/bin/chromium). Where it cannot be installed the test skips with a message.
set -u
if [ -x /usr/bin/chromium ]; then exit 0; fi
sudo_cmd=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo_cmd="sudo -n"; else
    echo "install-test-browser: not root and no sudo; the viewer test will be skipped" >&2; exit 0; fi
fi
if ! { $sudo_cmd apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq chromium; } >/tmp/posefleet-browser-install.log 2>&1; then
  echo "install-test-browser: apt-get could not install chromium (see /tmp/posefleet-browser-install.log); the viewer test will be skipped" >&2
fi
exit 0
