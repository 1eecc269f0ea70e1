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


def swift_snippet(package: str | Path, info: dict[str, Any], normalisation: dict[str, Any] | None = None,
                  class_names: Sequence[str] | None = None) -> str:
    """Swift that loads the package and runs one prediction, written from its *real* input/output names and types.

    ``info`` holds the package's ``inputs`` and ``outputs`` (a variant record's ``io``, or a
    ``playbook.coreml.PackageInfo``'s dict).
    """
    inputs, outputs = list(info.get("inputs") or []), list(info.get("outputs") or [])
    stem = Path(package).name.rsplit(".", 1)[0]
    resource = _swift_string(stem)
    lines = ["import CoreML", "", f"// {_swift_comment(Path(package).name)}: add it to your app target; Xcode compiles "
             f"it to {_swift_comment(stem)}.mlmodelc"]
    for f in inputs:
        lines.append(f"// input  {_swift_comment(f.get('name'))}: {_swift_comment(_feature_summary(f))}")
    for f in outputs:
        lines.append(f"// output {_swift_comment(f.get('name'))}: {_swift_comment(_feature_summary(f))}")
    if class_names:
        lines.append(f"// class order: {_swift_comment(', '.join(map(str, class_names)))}")
    lines += ["", "let configuration = MLModelConfiguration()", "configuration.computeUnits = .all",
              f"guard let url = Bundle.main.url(forResource: {resource}, withExtension: \"mlmodelc\") else {{",
              f"    fatalError(\"{_swift_comment(stem)}.mlmodelc is not in the app bundle\")", "}",
              "let model = try MLModel(contentsOf: url, configuration: configuration)", ""]
    feeds = []
    for f in inputs:
        var = _swift_identifier(f.get("name", "input"), "input")
        if f.get("type") == "imageType":
            fmt = _SWIFT_PIXEL_FORMATS.get(str(f.get("color_space")), "kCVPixelFormatType_32BGRA")
            lines += [f"// `cgImage` is your picture; Core ML scales it to {f.get('width')}x{f.get('height')} "
                      "and applies the folded-in normalisation",
                      f"let {var} = try MLFeatureValue(cgImage: cgImage, pixelsWide: {int(f.get('width') or 0)}, "
                      f"pixelsHigh: {int(f.get('height') or 0)}, pixelFormatType: {fmt}, options: nil)"]
            feeds.append((f.get("name"), var))
        elif f.get("type") == "multiArrayType":
            shape = ", ".join(str(int(s)) for s in f.get("shape") or [])
            dtype = _SWIFT_ARRAY_TYPES.get(str(f.get("dtype")), ".float32")
            lines.append(f"let {var} = try MLMultiArray(shape: [{shape}], dataType: {dtype})")
            if normalisation and normalisation.get("mean") is not None:
                mean = ", ".join(f"{m:.4f}" for m in normalisation["mean"])
                std = ", ".join(f"{s:.4f}" for s in normalisation["std"])
                lines.append(f"// fill {var} with (pixel / 255 - mean) / std per channel, mean [{mean}], std [{std}], "
                             "NCHW order")
            else:
                lines.append(f"// fill {var} exactly as the model was trained (see the input description in Xcode)")
            feeds.append((f.get("name"), f"MLFeatureValue(multiArray: {var})"))
        else:
            lines.append(f"let {var}: MLFeatureValue = ...  // {_swift_comment(f.get('type'))} input")
            feeds.append((f.get("name"), var))
    lines.append("let inputs = try MLDictionaryFeatureProvider(dictionary: [")
    for name, value in feeds:
        lines.append(f"    {_swift_string(name)}: {value},")
    lines += ["])", "let outputs = try model.prediction(from: inputs)"]
    for f in outputs:
        accessor, swift_type = _SWIFT_OUTPUT_ACCESSORS.get(str(f.get("type")), ("multiArrayValue", "MLMultiArray"))
        var = _swift_identifier(f.get("name", "output"), "output")
        lines.append(f"let {var} = outputs.featureValue(for: {_swift_string(f.get('name'))})?.{accessor}"
                     f"  // {swift_type}?")
    return "\n".join(lines) + "\n"


