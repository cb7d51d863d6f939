"""``posefleet evaluate``, ``evaluate-mot``, ``evaluate-boxes`` and ``optimize``: accuracy and model variants."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from posefleet.cli.common import CliError, needs, pipeline_config


def cmd_evaluate(args: argparse.Namespace) -> int:
    needs("pycocotools", "evaluate")
    from posefleet.evaluate import evaluate
    from posefleet.pipeline.engine import Pipeline

    cfg = pipeline_config(args)
    images = args.images or str(Path(args.annotations).parent)
    try:
        result = evaluate(Pipeline(cfg), args.annotations, images)
    except FileNotFoundError as exc:
        raise CliError(f"missing image or annotation file: {exc}") from exc
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    print(json.dumps(result, indent=2))
    return 0


def _print_evaluation(evaluate: Any, args: argparse.Namespace, paths: list[str]) -> int:
    from posefleet.pipeline.engine import Pipeline

    try:
        result = evaluate(Pipeline(pipeline_config(args)), paths)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    print(json.dumps(result, indent=2))
    return 0


def cmd_evaluate_mot(args: argparse.Namespace) -> int:
    needs("motmetrics", "evaluate-mot")
    from posefleet.mot import evaluate_mot

    return _print_evaluation(evaluate_mot, args, args.sequences)


def cmd_evaluate_boxes(args: argparse.Namespace) -> int:
    from posefleet.boxes import evaluate_boxes

    return _print_evaluation(evaluate_boxes, args, args.sets)


def cmd_optimize(args: argparse.Namespace) -> int:
    from posefleet.optimize import optimize

    cfg = pipeline_config(args)
    try:
        written = optimize(cfg, Path(args.out), args.calibration, args.frames)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    print(json.dumps(written, indent=2))
    print("point detector.model / pose.model at these files; `python -m bench` compares them", file=sys.stderr)
    return 0
