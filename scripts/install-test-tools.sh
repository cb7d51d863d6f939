#!/usr/bin/env bash
# Debian packages the tests drive for real: Chromium for the live viewer's end-to-end test
# (tests/test_viewer.py, Playwright with executablePath=/usr/bin/chromium) and ffmpeg as a network camera
# (tests/test_sources*.py). Where they cannot be installed those tests skip with a message.
set -u
missing=""
[ -x /usr/bin/chromium ] || missing="$missing chromium"
command -v ffmpeg >/dev/null 2>&1 || missing="$missing ffmpeg"
if [ -z "$missing" ]; then exit 0; fi
sudo_cmd=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo_cmd="sudo -n"; else
    echo "install-test-tools: not root and no sudo; tests needing$missing will be skipped" >&2; exit 0; fi
fi
if ! { $sudo_cmd apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq $missing; } >/tmp/posefleet-test-tools.log 2>&1; then
  echo "install-test-tools: apt-get could not install$missing (see /tmp/posefleet-test-tools.log); their tests will be skipped" >&2
fi
exit 0
