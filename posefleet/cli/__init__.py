"""posefleet: real-time multi-person pose estimation for many camera streams, served on Ray."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from posefleet.cli.common import TRANSPORTS, CliError
from posefleet.cli.evaluate import cmd_evaluate, cmd_evaluate_boxes, cmd_evaluate_mot, cmd_optimize
from posefleet.cli.run import cmd_run
from posefleet.cli.serve import cmd_serve
from posefleet.cli.sources import cmd_sources
from posefleet.cli.submit import cmd_submit, submit_status

__all__ = ["CliError", "build_parser", "main", "submit_status"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="posefleet", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log model/provider choices")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the in-process pipeline on videos, images or folders (several at once)")
    run.add_argument("sources", nargs="+", help="video files, images, folders of images, webcam indices or URLs; "
                     "several run as streams batched together")  # fmt: skip
    run.add_argument("--preset", default="balanced",
                     help="configs/<preset>.yaml: fast, balanced, quality, top-down, crowd")  # fmt: skip
    run.add_argument("--config", help="a YAML file merged over the preset")
    run.add_argument("--detect-every", type=int, help="override: run the detector every N frames")
    run.add_argument("--out", help="JSON lines output (default out/<stream>.jsonl; a folder for several sources)")
    run.add_argument("--annotate", help="write an annotated .mp4/.avi (or .jpg/.png for one image); "
                     "a folder of <stream>.mp4 for several sources")  # fmt: skip
    run.add_argument("--coco", help="also write COCO keypoint results (image_id = frame index)")
    run.add_argument("--roi", help="region of interest (the court) as image points 'x,y x,y x,y ...': scans cover "
                     "it, people standing outside it are not returned")  # fmt: skip
    run.add_argument("--keep-outside-roi", action="store_true", help="return them too, flagged outside_roi")
    run.add_argument("--stream", action="append", help="stream name, once per source (default: the source's name)")
    run.add_argument("--max-frames", type=int, help="stop after this many frames a stream")
    run.add_argument("--group", help="fuse the streams as one group (a court): writes <out>/<group>.group.jsonl "
                     "with one id a player, court positions and, from 2 calibrated cameras, 3D keypoints")  # fmt: skip
    run.add_argument("--calibration", action="append", default=[],
                     help="the group's cameras, named as the streams: Qualisys .qca.txt, Pose2Sim/Anipose .toml or "
                     "OpenCV .yml/.json (intrinsics and extrinsics may be two files)")  # fmt: skip
    run.add_argument("--court-points", help="YAML/JSON of stream: {template, points: [{image: [x, y], name}]}: "
                     "court homographies for cameras with no full calibration")  # fmt: skip
    run.add_argument("--court", help="the court template (configs/courts) that says who is outside the court")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    run.set_defaults(func=cmd_run)

    srv = sub.add_parser("serve", help="serve the HTTP API on a local Ray started on the spot (or --address)")
    srv.add_argument("--config", help="Serve config file (default configs/serve-cpu.yaml)")
    srv.add_argument("--host", help="bind address (default from the config)")
    srv.add_argument("--port", type=int, help="HTTP port (default from the config)")
    srv.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    srv.add_argument("--metrics-port", type=int, default=8080, help="Prometheus metrics port of the local Ray")
    srv.add_argument("--address", help="join a running Ray cluster instead (e.g. auto)")
    srv.add_argument("--submit", nargs="+", help="once serving, submit these sources through the HTTP API")
    srv.add_argument("--annotate", help="with --submit: draw the served results of the first source here")
    srv.add_argument("--out", default="out", help="with --submit or --source: folder for the results (JSON lines)")
    srv.add_argument(
        "--realtime",
        action="store_true",
        help="with --submit: send at the source's frame rate like a camera "
        "(frames the server cannot take in time are skipped); default: every frame, as fast as served",
    )
    srv.add_argument("--max-frames", type=int, help="with --submit: at most this many frames a stream")
    srv.add_argument("--transport", choices=TRANSPORTS, default="ws", help="with --submit: how frames travel")
    srv.add_argument("--source", action="append", default=[], metavar="URL",
                     help="a camera the server pulls from the start (its host or folder is allowed)")  # fmt: skip
    srv.add_argument("--once", action="store_true", help="stop after --submit instead of serving on")
    srv.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    srv.set_defaults(func=cmd_serve)

    sb = sub.add_parser("submit", help="post the frames of videos/images/cameras to a posefleet server")
    sb.add_argument("sources", nargs="+", help="video files, image folders, webcam indices or stream URLs")
    sb.add_argument("--stream", action="append", help="stream name, once per source (default: source name)")
    sb.add_argument("--url", default="http://127.0.0.1:8000", help="server address")
    sb.add_argument("--copies", type=int, default=1, help="submit each source as this many streams")
    sb.add_argument("--max-rate", action="store_true", help="as fast as the server answers, not at source FPS")
    sb.add_argument("--max-frames", type=int, help="at most this many frames a stream")
    sb.add_argument("--fps", type=float, help="send at this rate instead of the source's")
    sb.add_argument("--inflight", type=int, default=2, help="unanswered frames a stream may have")
    sb.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default="ws",
        help="a WebSocket per stream (default), a POST per frame, or multipart POSTs of many frames",
    )
    sb.add_argument("--out", default="out", help="folder for <stream>.jsonl results")
    sb.add_argument("--annotate", help="draw the served results onto a copy of each file source: a file "
                    "for one stream, else a folder of <stream>.mp4")  # fmt: skip
    sb.add_argument("--token", default=os.environ.get("POSEFLEET_TOKEN"),
                    help="bearer token for the API (default: $POSEFLEET_TOKEN)")  # fmt: skip
    sb.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    sb.set_defaults(func=cmd_submit)

    src = sub.add_parser("sources", help="cameras the server pulls itself: add, list, rm")
    src_sub = src.add_subparsers(dest="action", required=True)
    add = src_sub.add_parser("add", help="start pulling a camera into a stream")
    add.add_argument("source_url", help="rtsp://, http(s):// (MJPEG/HLS) or a file under an allowed directory")
    add.add_argument("--stream", required=True, help="the stream the frames go to")
    add.add_argument("--max-fps", type=float, help="hand on at most this many frames a second")
    add.add_argument("--group", help="e.g. the court the camera films")
    src_sub.add_parser("list", help="every source and its state")
    rm = src_sub.add_parser("rm", help="stop a source")
    rm.add_argument("stream", help="its stream id")
    for action in src_sub.choices.values():
        action.add_argument("--url", default="http://127.0.0.1:8000", help="server address")
        action.add_argument("--token", default=os.environ.get("POSEFLEET_TOKEN"),
                            help="bearer token for the API (default: $POSEFLEET_TOKEN)")  # fmt: skip
    src.set_defaults(func=cmd_sources)

    ev = sub.add_parser("evaluate", help="COCO keypoint AP (OKS) on a COCO-format annotated image set")
    ev.add_argument("annotations", help="COCO keypoints JSON (person_keypoints_*.json style)")
    ev.add_argument("--images", help="image folder (default: the annotation file's folder)")
    ev.add_argument("--preset", default="balanced")
    ev.add_argument("--config", help="a YAML file merged over the preset")
    ev.set_defaults(func=cmd_evaluate)

    mot = sub.add_parser("evaluate-mot", help="MOTA/IDF1/id switches against MOT-format box ground truth")
    mot.add_argument("sequences", nargs="+", help="MOT17-layout sequence folders (img1/, gt/gt.txt, seqinfo.ini)")
    mot.add_argument("--preset", default="balanced")
    mot.add_argument("--config", help="a YAML file merged over the preset")
    mot.add_argument("--detect-every", type=int, help="override: run the detector every N frames")
    mot.set_defaults(func=cmd_evaluate_mot)

    bx = sub.add_parser("evaluate-boxes", help="person recall and precision (IoU >= 0.5) on the Volleyball "
                        "dataset's annotations.txt or MOT17 sequences, each frame after those before it")  # fmt: skip
    bx.add_argument("sets", nargs="+", help="a Volleyball annotations.txt (or its folder), MOT17 sequence folders")
    bx.add_argument("--preset", default="balanced")
    bx.add_argument("--config", help="a YAML file merged over the preset")
    bx.add_argument("--roi", help="region of interest for every set, 'x,y x,y x,y ...'")
    bx.add_argument("--keep-outside-roi", action="store_true", help="count people outside it too")
    bx.add_argument("--detect-every", type=int, help="override: run the detector every N frames")
    bx.set_defaults(func=cmd_evaluate_boxes)

    op = sub.add_parser("optimize", help="write INT8 (calibrated) and FP16 variants of the models")
    op.add_argument("--out", default="models/optimized")
    op.add_argument("--calibration", default="tests/data/test_video_structuralize.mp4", help="real frames")
    op.add_argument("--frames", type=int, default=48, help="calibration frames")
    op.add_argument("--preset", default="balanced")
    op.add_argument("--config", help="a YAML file merged over the preset")
    op.set_defaults(func=cmd_optimize)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return args.func(args)
    except CliError as exc:
        print(f"posefleet: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
