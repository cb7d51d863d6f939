#!/usr/bin/python3
"""A real RTSP camera on loopback for tests and demos: GStreamer's RTSP server (Debian's
gir1.2-gst-rtsp-server-1.0 and python3-gi, run by the system Python that has them) plays an H.264 MP4 at its
own rate, without re-encoding, to every client that connects.

    /usr/bin/python3 scripts/rtsp_camera.py CLIP.mp4 --port 8554 --path /cam

The URL is then ``rtsp://127.0.0.1:8554/cam``. A clip ends the session (a camera that drops); loop the
file first (``ffmpeg -stream_loop N -i clip.mp4 -c copy long.mp4``) for a longer feed.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

ELEMENTS = ("filesrc", "qtdemux", "h264parse", "rtph264pay")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("clip", type=Path, nargs="?", help="an MP4 file with an H.264 video track")
    ap.add_argument("--check", action="store_true", help="exit 0 if every GStreamer part needed is installed")
    ap.add_argument("--port", type=int, default=8554)
    ap.add_argument("--path", default="/cam")
    args = ap.parse_args()
    Gst.init(None)
    missing = [e for e in ELEMENTS if Gst.ElementFactory.find(e) is None]
    if missing:
        sys.exit(f"rtsp_camera: GStreamer elements missing: {', '.join(missing)} (gstreamer1.0-plugins-good/-bad)")
    if args.check:
        return
    if args.clip is None or not args.clip.is_file():
        sys.exit(f"rtsp_camera: no such file: {args.clip}")
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    location = str(args.clip.resolve()).replace('"', '\\"')
    factory.set_launch(
        f'( filesrc location="{location}" ! qtdemux ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 )'
    )
    factory.set_shared(False)  # each client gets the clip from its start
    server.get_mount_points().add_factory(args.path, factory)
    if server.attach(None) == 0:
        sys.exit(f"rtsp_camera: cannot listen on 127.0.0.1:{args.port}")
    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print(f"rtsp://127.0.0.1:{args.port}{args.path}", flush=True)
    loop.run()


if __name__ == "__main__":
    main()
