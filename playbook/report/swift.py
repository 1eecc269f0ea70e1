"""Swift that loads a delivered package and runs one prediction, written from the package's *real*
input and output names and types (as recorded in its variant record)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

def _swift_string(text: str) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r") + '"'


def _swift_identifier(text: str, fallback: str = "value") -> str:
    words = [w for w in re.split(r"[^A-Za-z0-9]+", str(text)) if w]
    if not words:
        return fallback
    ident = words[0][0].lower() + words[0][1:] + "".join(w[:1].upper() + w[1:] for w in words[1:])
    return ident if not ident[0].isdigit() else f"{fallback}{ident}"


def _swift_comment(text: str) -> str:
    return json.dumps(str(text), ensure_ascii=False)[1:-1]


_SWIFT_ARRAY_TYPES = {"FLOAT32": ".float32", "FLOAT16": ".float16", "DOUBLE": ".double", "INT32": ".int32"}
_SWIFT_PIXEL_FORMATS = {"GRAYSCALE": "kCVPixelFormatType_OneComponent8", "GRAYSCALE_FLOAT16":
                        "kCVPixelFormatType_OneComponent16Half", "RGB": "kCVPixelFormatType_32BGRA",
                        "BGR": "kCVPixelFormatType_32BGRA"}
_SWIFT_OUTPUT_ACCESSORS = {"multiArrayType": ("multiArrayValue", "MLMultiArray"),
                           "dictionaryType": ("dictionaryValue", "[AnyHashable: NSNumber]"),
                           "stringType": ("stringValue", "String"), "int64Type": ("int64Value", "Int64"),
                           "doubleType": ("doubleValue", "Double"), "imageType": ("imageBufferValue", "CVPixelBuffer")}


def _feature_summary(f: dict[str, Any]) -> str:
    kind = f.get("type")
    if kind == "multiArrayType":
        return f"MLMultiArray, {f.get('dtype', '?')}, shape {f.get('shape')}"
    if kind == "imageType":
        return f"image {f.get('width')}x{f.get('height')}, {f.get('color_space', '?')}"
    if kind == "dictionaryType":
        return f"dictionary keyed by {f.get('key_type', '?')}"
    return str(kind)


def _preprocess_function(var: str, f: dict[str, Any], normalisation: dict[str, Any] | None) -> list[str] | None:
    """A Swift function that fills a 4-D NCHW multiarray input from a ``CGImage`` (drawn at the input's size,
    normalised as in training), or ``None`` when the input is not image-shaped."""
    shape = [int(s) for s in f.get("shape") or []]
    if len(shape) != 4 or shape[0] != 1 or shape[1] not in (1, 3):
        return None
    channels, height, width = shape[1], shape[2], shape[3]
    dtype = _SWIFT_ARRAY_TYPES.get(str(f.get("dtype")), ".float32")
    mean = list((normalisation or {}).get("mean") or [0.0] * channels)
    std = list((normalisation or {}).get("std") or [1.0] * channels)
    if len(mean) == 1 and channels == 3:
        mean, std = mean * 3, std * 3
    mean_txt = ", ".join(f"{m:.4f}" for m in mean[:channels])
    std_txt = ", ".join(f"{s:.4f}" for s in std[:channels])
    shape_txt = ", ".join(str(s) for s in shape)
    pixel = ("let value = 0.299 * r + 0.587 * g + 0.114 * b  // grayscale, as the training images"
             if channels == 1 else "let value = [r, g, b][c]")
    return [
        f"/// Fills `{var}` from a picture: drawn at {width}x{height}, then (pixel / 255 - mean) / std per channel,",
        f"/// mean [{mean_txt}], std [{std_txt}], NCHW order, exactly as the model was trained.",
        "/// The picture must look like the training images (framing, background, colours).",
        f"func make{var[:1].upper() + var[1:]}(from cgImage: CGImage) throws -> MLMultiArray {{",
        f"    let width = {width}, height = {height}",
        f"    let mean: [Float] = [{mean_txt}], std: [Float] = [{std_txt}]",
        "    var rgba = [UInt8](repeating: 0, count: width * height * 4)",
        "    let drawn = rgba.withUnsafeMutableBytes { buffer -> Bool in",
        "        guard let context = CGContext(data: buffer.baseAddress, width: width, height: height, bitsPerComponent: 8,",
        "                                      bytesPerRow: width * 4, space: CGColorSpaceCreateDeviceRGB(),",
        "                                      bitmapInfo: CGImageAlphaInfo.noneSkipLast.rawValue) else { return false }",
        "        context.interpolationQuality = .high",
        "        context.draw(cgImage, in: CGRect(x: 0, y: 0, width: width, height: height))",
        "        return true",
        "    }",
        "    guard drawn else { throw CocoaError(.coderInvalidValue) }",
        f"    let {var} = try MLMultiArray(shape: [{shape_txt}], dataType: {dtype})",
        "    for y in 0..<height {",
        "        for x in 0..<width {",
        "            let offset = (y * width + x) * 4",
        "            let r = Float(rgba[offset]), g = Float(rgba[offset + 1]), b = Float(rgba[offset + 2])",
        f"            for c in 0..<{channels} {{",
        f"                {pixel}",
        f"                {var}[[0, c, y, x] as [NSNumber]] = NSNumber(value: (value / 255 - mean[c]) / std[c])",
        "            }",
        "        }",
        "    }",
        f"    return {var}",
        "}",
        "",
        "/// A camera frame (CVPixelBuffer): converted to a CGImage first.",
        f"func make{var[:1].upper() + var[1:]}(from pixelBuffer: CVPixelBuffer) throws -> MLMultiArray {{",
        "    var cgImage: CGImage?",
        "    VTCreateCGImageFromCVPixelBuffer(pixelBuffer, options: nil, imageOut: &cgImage)",
        "    guard let cgImage else { throw CocoaError(.coderInvalidValue) }",
        f"    return try make{var[:1].upper() + var[1:]}(from: cgImage)",
        "}",
        "",
    ]


def swift_snippet(package: str | Path, info: dict[str, Any], normalisation: dict[str, Any] | None = None,
                  class_names: Sequence[str] | None = None) -> str:
    """Swift that loads the package, turns a ``CGImage`` or ``CVPixelBuffer`` into its input and its output into a
    class label, written from the package's *real* input/output names and types.

    ``info`` holds the package's ``inputs`` and ``outputs`` (a variant record's ``io``, or a
    ``playbook.coreml.PackageInfo``'s dict); ``normalisation`` the training mean and std per channel.
    """
    inputs, outputs = list(info.get("inputs") or []), list(info.get("outputs") or [])
    stem = Path(package).name.rsplit(".", 1)[0]
    resource = _swift_string(stem)
    lines = ["import CoreML", "import CoreGraphics", "import Foundation", "import VideoToolbox", "",
             f"// {_swift_comment(Path(package).name)}: add it to your app target; Xcode compiles "
             f"it to {_swift_comment(stem)}.mlmodelc"]
    for f in inputs:
        lines.append(f"// input  {_swift_comment(f.get('name'))}: {_swift_comment(_feature_summary(f))}")
    for f in outputs:
        lines.append(f"// output {_swift_comment(f.get('name'))}: {_swift_comment(_feature_summary(f))}")
    lines += ["", "let configuration = MLModelConfiguration()", "configuration.computeUnits = .all",
              f"guard let url = Bundle.main.url(forResource: {resource}, withExtension: \"mlmodelc\") else {{",
              f"    fatalError(\"{_swift_comment(stem)}.mlmodelc is not in the app bundle\")", "}",
              "let model = try MLModel(contentsOf: url, configuration: configuration)", ""]
    logits_outputs = [f for f in outputs if f.get("type") == "multiArrayType"]
    if class_names and logits_outputs:
        labels = ", ".join(_swift_string(c) for c in class_names)
        lines += ["/// Class names in the order of the model's outputs.", f"let classLabels = [{labels}]", "",
                  "/// The most likely class and its softmax probability.",
                  "func topClass(_ logits: MLMultiArray) -> (label: String, probability: Float) {",
                  "    let scores = (0..<logits.count).map { logits[$0].floatValue }",
                  "    let best = scores.indices.max { scores[$0] < scores[$1] }!",
                  "    let exps = scores.map { exp($0 - scores[best]) }",
                  "    return (classLabels[best], exps[best] / exps.reduce(0, +))", "}", ""]
    feeds, body = [], []
    for f in inputs:
        var = _swift_identifier(f.get("name", "input"), "input")
        if f.get("type") == "imageType":
            fmt = _SWIFT_PIXEL_FORMATS.get(str(f.get("color_space")), "kCVPixelFormatType_32BGRA")
            body += [f"// `cgImage` is your picture; Core ML scales it to {f.get('width')}x{f.get('height')} "
                     "and applies the folded-in normalisation",
                     f"let {var} = try MLFeatureValue(cgImage: cgImage, pixelsWide: {int(f.get('width') or 0)}, "
                     f"pixelsHigh: {int(f.get('height') or 0)}, pixelFormatType: {fmt}, options: nil)",
                     f"// from a camera frame instead: let {var} = MLFeatureValue(pixelBuffer: pixelBuffer)"]
            feeds.append((f.get("name"), var))
        elif f.get("type") == "multiArrayType":
            function = _preprocess_function(var, f, normalisation)
            if function is not None:
                lines += function
                body.append(f"let {var} = try make{var[:1].upper() + var[1:]}(from: cgImage)  "
                            "// `cgImage`: your picture (or pass a CVPixelBuffer)")
            else:
                shape = ", ".join(str(int(s)) for s in f.get("shape") or [])
                dtype = _SWIFT_ARRAY_TYPES.get(str(f.get("dtype")), ".float32")
                body += [f"let {var} = try MLMultiArray(shape: [{shape}], dataType: {dtype})",
                         f"// fill {var} exactly as the model was trained (see the input description in Xcode)"]
            feeds.append((f.get("name"), f"MLFeatureValue(multiArray: {var})"))
        else:
            body.append(f"let {var}: MLFeatureValue = ...  // {_swift_comment(f.get('type'))} input")
            feeds.append((f.get("name"), var))
    lines += body
    lines.append("let inputs = try MLDictionaryFeatureProvider(dictionary: [")
    for name, value in feeds:
        lines.append(f"    {_swift_string(name)}: {value},")
    lines += ["])", "let outputs = try model.prediction(from: inputs)"]
    for f in outputs:
        accessor, swift_type = _SWIFT_OUTPUT_ACCESSORS.get(str(f.get("type")), ("multiArrayValue", "MLMultiArray"))
        var = _swift_identifier(f.get("name", "output"), "output")
        lines.append(f"let {var} = outputs.featureValue(for: {_swift_string(f.get('name'))})?.{accessor}"
                     f"  // {swift_type}?")
        if class_names and f.get("type") == "multiArrayType":
            lines += [f"if let {var} {{", f"    let (label, probability) = topClass({var})",
                      "    print(\"\\(label): \\(probability)\")", "}"]
    return "\n".join(lines) + "\n"


# Apple's Core AI documentation the Core AI snippet is written from (the framework is in beta; nothing here was
# compiled): loading, functions, arrays, running, outputs.
COREAI_DOCS = (
    "https://developer.apple.com/documentation/coreai/aimodel",
    "https://developer.apple.com/documentation/coreai/aimodel/loadfunction(named:)",
    "https://developer.apple.com/documentation/coreai/ndarray/init(scalars:shape:)",
    "https://developer.apple.com/documentation/coreai/inferencefunction/run(inputs:states:outputviews:)-mqfb",
    "https://developer.apple.com/documentation/coreai/inferencefunction/outputs",
    "https://developer.apple.com/documentation/coreai/inferencevalue",
)


def coreai_swift_snippet(model: str | Path, info: dict[str, Any], normalisation: dict[str, Any] | None = None,
                         class_names: Sequence[str] | None = None, min_os: str = "27") -> str:
    """Swift that loads a ``.aimodel`` with Apple's Core AI framework and runs its ``main`` function once, from the
    recorded input and output names and shape (a Core AI variant record's ``io``).  Only documented calls are used
    (``COREAI_DOCS``): ``AIModel(contentsOf:)``, ``loadFunction(named:)``, ``NDArray(scalars:shape:)``,
    ``run(inputs:)``, ``Outputs.remove(_:)`` and ``InferenceValue.ndArray``; reading the scores out of the output
    array is left to the reader, with a pointer to the documentation, rather than guessed."""
    inputs, outputs = list(info.get("inputs") or []), list(info.get("outputs") or [])
    stem = Path(model).name.rsplit(".", 1)[0]
    first = inputs[0] if inputs else {"name": "image", "shape": []}
    out = outputs[0] if outputs else {"name": "logits", "shape": []}
    shape = [int(s) for s in first.get("shape") or []]
    scalar = "Float16" if str(first.get("dtype")) == "FLOAT16" else "Float"
    lines = ["import CoreAI", "import Foundation", "",
             f"// {_swift_comment(Path(model).name)}: add it to your app target; it loads on iOS / macOS {min_os} or "
             "later.",
             f"// input  {_swift_comment(first.get('name'))}: {scalar} array, shape {shape} (N, C, H, W; the batch "
             f"may be {_swift_comment(first.get('batch') or 'fixed')})",
             f"// output {_swift_comment(out.get('name'))}: shape {out.get('shape')}, one score per class",
             "// Written from Apple's Core AI documentation; not compiled here (the framework is in beta).", ""]
    if normalisation and normalisation.get("mean"):
        lines.append(f"// normalise each channel as in training: (value / 255 - mean) / std, mean "
                     f"{normalisation.get('mean')}, std {normalisation.get('std')}")
    if class_names:
        lines += ["/// Class names in the order of the model's outputs.",
                  f"let classLabels = [{', '.join(_swift_string(c) for c in class_names)}]", ""]
    lines += [f"@available(iOS {min_os}, macOS {min_os}, *)",
              f"func classScores(pixels: [{scalar}]) async throws -> NDArray? {{",
              f"    // `pixels`: {'x'.join(str(s) for s in shape) or 'the input'} values in N, C, H, W order, "
              "normalised as above",
              f"    guard let url = Bundle.main.url(forResource: {_swift_string(stem)}, withExtension: \"aimodel\") "
              "else {",
              f"        fatalError(\"{_swift_comment(stem)}.aimodel is not in the app bundle\")", "    }",
              "    let model = try await AIModel(contentsOf: url)",
              "    guard let function = try model.loadFunction(named: \"main\") else {",
              "        fatalError(\"the model has no function named main\")", "    }",
              f"    let input = NDArray(scalars: pixels, shape: {shape})",
              f"    var outputs = try await function.run(inputs: [{_swift_string(first.get('name'))}: input])",
              f"    return outputs.remove({_swift_string(out.get('name'))})?.ndArray",
              "}",
              "// Read the scores from the returned NDArray as its documentation describes, then take the largest"
              + (" (its index into classLabels is the class)." if class_names else "."),
              "// Load the model and function once and keep them: loading specializes the model for the device."]
    return "\n".join(lines) + "\n"
