"""Can MoveNet MultiPose batch? Its graph has a fixed batch of 1 because its post-processing (top-k
centres, gathers) is written for one image; the backbone and heads are convolutions.

    python -m bench.movenet_batch [--frames 8]

Splits the shipped graph at the heads' outputs (``onnx.utils.Extractor``): the convolutional part gets
a dynamic batch, the post-processing runs per frame. Checks that the two parts give exactly what the
whole graph gives, then times batch 1/4/8 on this machine against the whole graph at batch 1.
"""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import utils

from posefleet import models
from posefleet.config import load_pipeline_config
from posefleet.pipeline.detector import make_decoder
from posefleet.sources import open_source

CLIP = Path(__file__).resolve().parent.parent / "tests" / "data" / "test_video_structuralize.mp4"
BACKBONE_OPS = {"Conv", "Relu", "Clip", "Add", "Resize", "Concat", "Mul"}


def split(model: onnx.ModelProto) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(convolutions with a dynamic batch, per-frame post-processing), cut at the head convolutions."""
    consumers = collections.defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            consumers[name].append(node)
    heads = [n.output[0] for n in model.graph.node
             if n.op_type == "Conv" and any(c.op_type not in BACKBONE_OPS for c in consumers[n.output[0]])]  # fmt: skip
    extractor = utils.Extractor(onnx.shape_inference.infer_shapes(model))
    convs = extractor.extract_model([model.graph.input[0].name], heads)
    post = extractor.extract_model(heads, [model.graph.output[0].name])
    for value in [*convs.graph.input, *convs.graph.output, *convs.graph.value_info]:
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].dim_value == 1:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "N"
    return convs, post


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    cfg = load_pipeline_config("balanced")
    whole = onnx.load_from_string(models.load(cfg.detector.model, cfg.detector.sha256).data)
    convs, post = split(whole)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    run = {name: ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
           for name, m in (("whole", whole), ("convs", convs), ("post", post))}  # fmt: skip
    decoder = make_decoder(cfg.detector.model_copy(update={"tiling": cfg.detector.tiling.model_copy(update={
        "enabled": False})}))  # fmt: skip
    frames = [decoder.prepare(f.image)[0][0] for _, f in zip(range(args.frames), open_source(str(CLIP)), strict=False)]
    x = np.concatenate(frames)
    inp = whole.graph.input[0].name
    feats = dict(zip([o.name for o in run["convs"].get_outputs()], run["convs"].run(None, {inp: x}), strict=True))
    post_in = [i.name for i in run["post"].get_inputs()]

    def post_one(k: int) -> np.ndarray:
        return run["post"].run(None, {n: feats[n][k : k + 1] for n in post_in})[0]

    diff = max(float(np.abs(run["whole"].run(None, {inp: frames[k]})[0] - post_one(k)).max()) for k in range(len(x)))
    print(f"input {x.shape[1:]}; split vs whole graph, max abs difference over {len(x)} frames: {diff:.1e}")

    def ms(fn: object, reps: int) -> float:
        fn()  # type: ignore[operator]
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()  # type: ignore[operator]
        return (time.perf_counter() - t0) * 1000 / reps

    whole_ms = ms(lambda: run["whole"].run(None, {inp: frames[0]}), args.reps)
    print("| batch | convolutions ms/frame | post-processing ms/frame | total ms/frame | whole graph, batch 1 |")
    print("|---|---|---|---|---|")
    for batch in (1, 4, 8):
        conv_ms = ms(lambda b=batch: run["convs"].run(None, {inp: x[:b]}), args.reps) / batch
        post_ms = ms(lambda: post_one(0), args.reps)
        print(f"| {batch} | {conv_ms:.2f} | {post_ms:.2f} | {conv_ms + post_ms:.2f} | {whole_ms:.2f} |")


if __name__ == "__main__":
    main()
