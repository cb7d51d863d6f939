#!/usr/bin/env bash
# Debian packages the tests drive for real: Chromium for the live viewer's end-to-end test
# (tests/test_viewer.py, Playwright with executablePath=/usr/bin/chromium), ffmpeg as a network camera and
# GStreamer's RTSP server as a live RTSP camera (scripts/rtsp_camera.py, run by Debian's python3 with python3-gi;
# tests/test_sources*.py). Where they cannot be installed those tests skip with a message.
set -u
missing=""
[ -x /usr/bin/chromium ] || missing="$missing chromium"
command -v ffmpeg >/dev/null 2>&1 || missing="$missing ffmpeg"
/usr/bin/python3 "$(dirname "$0")/rtsp_camera.py" --check >/dev/null 2>&1 || missing="$missing python3-gi \
gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad"
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
