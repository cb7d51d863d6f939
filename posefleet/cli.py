"""``posefleet`` command line."""

from __future__ import annotations

import argparse
import collections
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from posefleet.config import PipelineConfig, load_pipeline_config


class CliError(Exception):
    """An error shown to the user as one line, exit status 2."""


def _pipeline_config(args: argparse.Namespace) -> PipelineConfig:
    overrides: dict[str, Any] = {}
    if getattr(args, "detect_every", None):
        overrides["detect_every"] = args.detect_every
    try:
        return load_pipeline_config(args.preset, args.config, overrides)
    except (ValueError, OSError) as exc:
        raise CliError(f"bad configuration: {exc}") from exc


class _VideoOut:
    """Annotated output: a video (.mp4/.avi) or, for one image, a picture (.jpg/.png)."""

    def __init__(self, path: Path, fps: float):
        self.path, self.fps = path, fps
        self.writer: cv2.VideoWriter | None = None
        self.is_image = path.suffix.lower() in {".jpg", ".jpeg", ".png"}
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, image: np.ndarray) -> None:
        if self.is_image:
            cv2.imwrite(str(self.path), image)
            return
        if self.writer is None:
            fourcc = cv2.VideoWriter_fourcc(*("mp4v" if self.path.suffix.lower() == ".mp4" else "MJPG"))
            h, w = image.shape[:2]
            self.writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, (w, h))
            if not self.writer.isOpened():
                raise CliError(f"cannot write video {self.path}")
        self.writer.write(image)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


def cmd_run(args: argparse.Namespace) -> int:
    from posefleet.actors.pipeline import Pipeline
    from posefleet.coco import coco_results
    from posefleet.draw import draw_people
    from posefleet.models import ModelFileError
    from posefleet.sources import SourceError, open_source

    cfg = _pipeline_config(args)
    try:
        source = open_source(args.source)
        pipeline = Pipeline(cfg)
    except (SourceError, ModelFileError) as exc:
        raise CliError(str(exc)) from exc
    stream = args.stream or source.name
    out_path = Path(args.out or f"out/{stream}.jsonl")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    annotate = _VideoOut(Path(args.annotate), source.fps) if args.annotate else None
    recent: collections.deque[float] = collections.deque(maxlen=30)
    stages = collections.defaultdict(list)
    coco: list = []
    total = min(source.count or 0, args.max_frames or 10**9) or None
    t_start = time.perf_counter()
    frames = people = 0
    with out_path.open("w") as out, tqdm(total=total, unit="frame", desc=stream, disable=args.quiet) as bar:
        try:
            for frame in source:
                if args.max_frames and frames >= args.max_frames:
                    break
                t0 = time.perf_counter()
                result = pipeline.process(stream, frame.image, frame.index, frame.timestamp)
                recent.append(time.perf_counter() - t0)
                out.write(result.model_dump_json() + "\n")
                for k, v in result.timings.model_dump().items():
                    stages[k].append(v)
                coco.append((frame.index, result))
                frames += 1
                people += len(result.people)
                if annotate:
                    fps = len(recent) / max(sum(recent), 1e-9)
                    status = f"{stream} #{frame.index}  {fps:.1f} FPS  {len(result.people)} people"
                    annotate.write(draw_people(frame.image, result.people, status=status))
                bar.update(1)
                bar.set_postfix(people=len(result.people), ms=f"{result.timings.total_ms:.0f}")
        except SourceError as exc:
            raise CliError(str(exc)) from exc
        finally:
            if annotate:
                annotate.close()
    if frames == 0:
        raise CliError(f"{args.source}: no frames could be read")
    if args.coco:
        Path(args.coco).write_text(json.dumps(coco_results(coco)))
    wall = time.perf_counter() - t_start
    means = {k: float(np.mean(v)) for k, v in stages.items()}
    print(
        f"{frames} frames, {people} people, {frames / wall:.1f} FPS; mean ms: "
        + ", ".join(f"{k.removesuffix('_ms')} {v:.1f}" for k, v in means.items()),
        file=sys.stderr,
    )
    print(
        f"results: {out_path}" + (f"; annotated: {args.annotate}" if args.annotate else ""), file=sys.stderr
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="posefleet", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log model/provider choices")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the in-process pipeline on a video, image or folder")
    run.add_argument("source", help="video file, image, folder of images, webcam index or stream URL")
    run.add_argument("--preset", default="balanced", help="configs/<preset>.yaml: fast, balanced, quality")
    run.add_argument("--config", help="a YAML file merged over the preset")
    run.add_argument("--detect-every", type=int, help="override: run the detector every N frames")
    run.add_argument("--out", help="JSON lines output (default out/<stream>.jsonl)")
    run.add_argument("--annotate", help="write an annotated .mp4/.avi (or .jpg/.png for one image)")
    run.add_argument("--coco", help="also write COCO keypoint results (image_id = frame index)")
    run.add_argument("--stream", help="stream name (default: the source's name)")
    run.add_argument("--max-frames", type=int, help="stop after this many frames")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    run.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except CliError as exc:
        print(f"posefleet: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
