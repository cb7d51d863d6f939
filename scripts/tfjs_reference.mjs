// Runs a TFJS graph model (model.json + its .bin shards) on one input with TensorFlow.js itself (its pure-JS
// CPU backend), so scripts/convert_models.py can check a converted ONNX model against the original.
//
//   npm install --prefix build/tfjs @tensorflow/tfjs@4
//   NODE_PATH=build/tfjs/node_modules node scripts/tfjs_reference.mjs model.json input.json out.json
//
// input.json: {"dtype": "float32" | "int32", "shape": [...], "data": [...]}; out.json: a list of
// {"name", "shape", "data"} in the order of the model's signature outputs.
import { createRequire } from "node:module";
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";

const require = createRequire(join(process.env.NODE_PATH || ".", "noop.js"));
const tf = require("@tensorflow/tfjs");

const [modelPath, inputPath, outPath] = process.argv.slice(2);
const model = JSON.parse(readFileSync(modelPath, "utf8"));
const specs = model.weightsManifest.flatMap((group) => group.weights);
const shards = model.weightsManifest.flatMap((group) =>
  group.paths.map((p) => readFileSync(p.startsWith("/") ? p : join(dirname(modelPath), p))),
);
const weights = Buffer.concat(shards);
const handler = tf.io.fromMemory({
  modelTopology: model.modelTopology,
  weightSpecs: specs,
  weightData: weights.buffer.slice(weights.byteOffset, weights.byteOffset + weights.byteLength),
  format: model.format,
  signature: model.signature,
});
await tf.setBackend("cpu");
const graph = await tf.loadGraphModel(handler);
const input = JSON.parse(readFileSync(inputPath, "utf8"));
const x = tf.tensor(input.data, input.shape, input.dtype);
const names = Object.values(model.signature.outputs).map((o) => o.name);
const outs = graph.execute(x, names);
const list = Array.isArray(outs) ? outs : [outs];
writeFileSync(
  outPath,
  JSON.stringify(list.map((t, i) => ({ name: names[i], shape: t.shape, data: Array.from(t.dataSync()) }))),
);
