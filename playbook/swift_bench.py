"""A Swift benchmark, generated per model from its packages' real input names and shapes, for an iPhone.

An iOS engineer adds ``PlaybookBenchmark.swift`` and the packages (renamed as the file lists them) to an app or a
unit-test target in Xcode, calls ``runPlaybookBenchmark()`` on a real device, and gets one JSON document that
follows ``bench_schema.RESULTS_SCHEMA`` -- the same schema ``playbook bench`` writes -- printed to the console
and saved in the app's Documents folder.  ``playbook import-bench results.json --model NAME`` validates it and
merges it into the model's benchmark record.

What it measures, per package and compute unit (``.cpuOnly``, ``.cpuAndGPU``, ``.cpuAndNeuralEngine``, ``.all``):
load time (first ``MLModel(contentsOf:configuration:)``, then a second, cached load), the first prediction,
then warm-up and timed predictions in blocks until the median moved less than 0.5% three checks in a row (or
2000 runs / 3 s); median, p90, p99 (linear interpolation, as NumPy), mean, coefficient of variation, FPS and
every sample; the rise of the app's physical memory footprint (``task_vm_info.phys_footprint``) after the load
and one prediction; ``MLComputePlan`` ops per compute device and Apple's cost estimate where iOS 17.4+ offers it.
Energy is not read (``measured: false`` with the reason).  The code is written against Apple's documented Core ML
API; it is not compiled here (no Apple toolchain on Linux), its JSON keys are checked against the schema in tests.
"""
from __future__ import annotations

import json
import re
from typing import Any, Sequence

from playbook.bench_schema import FORMAT, SCHEMA_VERSION

SWIFT_FILE = "PlaybookBenchmark.swift"
_DTYPES = {"FLOAT32": ".float32", "FLOAT16": ".float16", "DOUBLE": ".double", "INT32": ".int32"}
_PIXEL_FORMATS = {"GRAYSCALE": "kCVPixelFormatType_OneComponent8", "RGB": "kCVPixelFormatType_32BGRA",
                  "BGR": "kCVPixelFormatType_32BGRA", "GRAYSCALE_FLOAT16": "kCVPixelFormatType_OneComponent16Half"}
# The keys the Swift code writes, per block; tests compare them with bench_schema.MEASUREMENT_SCHEMA.
SWIFT_KEYS = {
    "measurement": ["model", "stage", "variant", "package_sha256", "backend", "tier", "setting", "compute_units",
                    "threads", "batch", "inputs", "environment", "load", "first_prediction", "latency", "memory",
                    "energy", "compute_plan", "timestamp"],
    "latency": ["unit", "median", "p90", "p99", "mean", "cv", "fps", "runs", "warmup", "stopped", "seconds",
                "samples"],
}


def resource_name(stage: str, package: str) -> str:
    """The unique bundle name a package gets in the app: ``<stage>_<stem>`` (two stages may share a file stem)."""
    stem = package.rsplit("/", 1)[-1].removesuffix(".mlpackage")
    return re.sub(r"[^A-Za-z0-9_]+", "_", f"{stage}_{stem}")


def _swift_string(text: Any) -> str:
    return json.dumps(str(text), ensure_ascii=True)  # a JSON string literal is a valid Swift string literal


def _input_code(spec: dict[str, Any]) -> str:
    name = _swift_string(spec["name"])
    if spec.get("type") == "imageType":
        fmt = _PIXEL_FORMATS.get(str(spec.get("color_space")), "kCVPixelFormatType_32BGRA")
        return (f"Feed.image(name: {name}, width: {int(spec['width'])}, height: {int(spec['height'])}, "
                f"pixelFormat: {fmt})")
    shape = ", ".join(str(int(s)) for s in spec.get("shape") or [])
    return f"Feed.array(name: {name}, shape: [{shape}], dataType: {_DTYPES.get(str(spec.get('dtype')), '.float32')})"


def swift_benchmark(model: str, targets: Sequence[dict[str, Any]]) -> str:
    """The Swift source: one ``Target`` per package (``stage``, ``variant``, ``package_sha256``, ``package``
    relative path, ``io`` with the package's real ``inputs``)."""
    rows = []
    for t in targets:
        feeds = ", ".join(_input_code(f) for f in t["io"].get("inputs") or [])
        rows.append(f"    Target(stage: {_swift_string(t['stage'])}, variant: {_swift_string(t['variant'])}, "
                    f"sha256: {_swift_string(t['package_sha256'])}, "
                    f"resource: {_swift_string(resource_name(t['stage'], t['package']))}, inputs: [{feeds}]),")
    listing = "\n".join(f"//   {t['package']}  ->  {resource_name(t['stage'], t['package'])}.mlpackage" for t in targets)
    return _TEMPLATE.format(model=_swift_string(model), model_comment=json.dumps(model)[1:-1], listing=listing,
                            targets="\n".join(rows), format=_swift_string(FORMAT), schema=SCHEMA_VERSION)


def copy_script(targets: Sequence[dict[str, Any]]) -> str:
    """A shell script that copies each package under its unique bundle name into ``Models/``."""
    lines = ["#!/bin/sh", "# Run from reports/<model>/benchmark/ios/: copies the packages under the names "
             f"{SWIFT_FILE} loads.", "set -e", "mkdir -p Models"]
    for t in targets:
        lines.append(f"rm -rf 'Models/{resource_name(t['stage'], t['package'])}.mlpackage' && cp -R "
                     f"'../../{t['package']}' 'Models/{resource_name(t['stage'], t['package'])}.mlpackage'")
    return "\n".join(lines) + "\n"


INSTRUCTIONS = (
    "Run `sh copy_models.sh` in reports/<model>/benchmark/ios/ (copies each .mlpackage under a unique name into Models/).",
    "In Xcode, add PlaybookBenchmark.swift and the Models/*.mlpackage files to an iOS app target (or a unit-test "
    "target hosted by the app); Xcode compiles each package into the bundle as .mlmodelc.",
    "Run on a real iPhone, not the Simulator, and call `let json = await runPlaybookBenchmark()` (e.g. from a "
    "SwiftUI .task or an async XCTest); keep the phone awake, on power, and the app in the foreground.",
    "Copy the printed JSON (also saved as Documents/playbook-benchmark.json) to results.json on your computer.",
    "Run `playbook import-bench results.json --model <model>`, then `playbook run --model <model> --stages 06` to "
    "re-render the report with the device figures.",
)

_TEMPLATE = r"""// PlaybookBenchmark.swift -- generated by the Core ML optimization playbook for model "{model_comment}".
// Do not edit: regenerate with the benchmark stage (notebook 05) so the package hashes stay right.
// Not compiled by the playbook (no Apple toolchain on Linux); written against Apple's documented Core ML API.
//
// Add to the app target, under these names (copy_models.sh does it):
{listing}
//
// Then call `await runPlaybookBenchmark()` on a device. It prints one JSON document (format "playbook-benchmark-results",
// schema version {schema}) and writes it to Documents/playbook-benchmark.json; bring it home with
//   playbook import-bench results.json --model {model_comment}
import CoreML
import CoreVideo
import Foundation

enum Feed {{
    case array(name: String, shape: [Int], dataType: MLMultiArrayDataType)
    case image(name: String, width: Int, height: Int, pixelFormat: OSType)

    var name: String {{
        switch self {{ case .array(let n, _, _), .image(let n, _, _, _): return n }}
    }}
    var shape: [Int] {{
        switch self {{
        case .array(_, let s, _): return s
        case .image(_, let w, let h, let f): return [1, f == kCVPixelFormatType_32BGRA ? 3 : 1, h, w]
        }}
    }}
    func value() throws -> MLFeatureValue {{
        switch self {{
        case .array(_, let shape, let dataType):
            let array = try MLMultiArray(shape: shape.map {{ NSNumber(value: $0) }}, dataType: dataType)
            for i in 0..<array.count {{ array[i] = NSNumber(value: Float(i % 17) / 17.0 - 0.5) }}
            return MLFeatureValue(multiArray: array)
        case .image(_, let width, let height, let pixelFormat):
            var buffer: CVPixelBuffer?
            CVPixelBufferCreate(kCFAllocatorDefault, width, height, pixelFormat, nil, &buffer)
            guard let pixels = buffer else {{ throw NSError(domain: "PlaybookBenchmark", code: 1) }}
            return MLFeatureValue(pixelBuffer: pixels)
        }}
    }}
}}

struct Target {{
    let stage: String
    let variant: String
    let sha256: String
    let resource: String
    let inputs: [Feed]
}}

let playbookModel = {model}
let playbookTargets: [Target] = [
{targets}
]
let playbookComputeUnits: [(String, MLComputeUnits)] = [
    ("CPU_ONLY", .cpuOnly), ("CPU_AND_GPU", .cpuAndGPU), ("CPU_AND_NE", .cpuAndNeuralEngine), ("ALL", .all),
]

private func nowMs() -> Double {{ Double(DispatchTime.now().uptimeNanoseconds) / 1_000_000 }}

private func footprintMB() -> Double? {{
    var info = task_vm_info_data_t()
    var count = mach_msg_type_number_t(MemoryLayout<task_vm_info_data_t>.size / MemoryLayout<natural_t>.size)
    let kr = withUnsafeMutablePointer(to: &info) {{
        $0.withMemoryRebound(to: integer_t.self, capacity: Int(count)) {{
            task_info(mach_task_self_, task_flavor_t(TASK_VM_INFO), $0, &count)
        }}
    }}
    return kr == KERN_SUCCESS ? Double(info.phys_footprint) / 1_000_000 : nil
}}

/// NumPy's default percentile (linear interpolation between closest ranks).
private func percentile(_ sorted: [Double], _ q: Double) -> Double {{
    let position = q / 100 * Double(sorted.count - 1)
    let low = Int(position.rounded(.down)), high = Int(position.rounded(.up))
    return sorted[low] + (sorted[high] - sorted[low]) * (position - Double(low))
}}

private func median(_ values: [Double]) -> Double {{ percentile(values.sorted(), 50) }}

private func deviceName() -> String {{
    var system = utsname()
    uname(&system)
    return withUnsafeBytes(of: &system.machine) {{ String(decoding: $0.prefix(while: {{ $0 != 0 }}), as: UTF8.self) }}
}}

private func osName() -> String {{
    let v = ProcessInfo.processInfo.operatingSystemVersion
    #if os(iOS)
    let name = "iOS"
    #elseif os(macOS)
    let name = "macOS"
    #else
    let name = "unknown"
    #endif
    return "\(name) \(v.majorVersion).\(v.minorVersion).\(v.patchVersion)"
}}

private func computePlan(_ url: URL, _ configuration: MLModelConfiguration) async -> [String: Any] {{
    if #available(iOS 17.4, macOS 14.4, *) {{
        do {{
            let plan = try await MLComputePlan.load(contentsOf: url, configuration: configuration)
            guard case .program(let program) = plan.modelStructure, let main = program.functions["main"] else {{
                return ["measured": false, "ops_total": NSNull(), "ops_by_device": NSNull(), "cost_by_device": NSNull(),
                        "why": "not measured: the model is not an ML program"]
            }}
            var ops = 0
            var byDevice: [String: Int] = [:]
            var cost: [String: Double] = [:]
            for operation in main.block.operations where operation.operatorName != "const" {{
                ops += 1
                var device = "unknown"
                if let usage = plan.deviceUsage(for: operation) {{
                    switch usage.preferred {{
                    case .cpu: device = "CPU"
                    case .gpu: device = "GPU"
                    case .neuralEngine: device = "NeuralEngine"
                    @unknown default: device = "unknown"
                    }}
                }}
                byDevice[device, default: 0] += 1
                if let estimate = plan.estimatedCost(of: operation) {{ cost[device, default: 0] += estimate.weight }}
            }}
            return ["measured": true, "ops_total": ops, "ops_by_device": byDevice, "cost_by_device": cost,
                    "what": "MLComputePlan: preferred device of each op; cost = Apple's estimated share of the work"]
        }} catch {{
            return ["measured": false, "ops_total": NSNull(), "ops_by_device": NSNull(), "cost_by_device": NSNull(),
                    "why": "not measured: MLComputePlan failed (\(error))"]
        }}
    }}
    return ["measured": false, "ops_total": NSNull(), "ops_by_device": NSNull(), "cost_by_device": NSNull(),
            "why": "not measured: MLComputePlan needs iOS 17.4 / macOS 14.4"]
}}

private func measure(_ target: Target, _ unitName: String, _ units: MLComputeUnits) async throws -> [String: Any] {{
    guard let url = Bundle.main.url(forResource: target.resource, withExtension: "mlmodelc") else {{
        throw NSError(domain: "PlaybookBenchmark", code: 2,
                      userInfo: [NSLocalizedDescriptionKey: "\(target.resource).mlmodelc is not in the app bundle"])
    }}
    let configuration = MLModelConfiguration()
    configuration.computeUnits = units
    let before = footprintMB()
    var t0 = nowMs()
    _ = try MLModel(contentsOf: url, configuration: configuration)
    let firstLoad = nowMs() - t0
    t0 = nowMs()
    let model = try MLModel(contentsOf: url, configuration: configuration)
    let cachedLoad = nowMs() - t0
    var values: [String: MLFeatureValue] = [:]
    for feed in target.inputs {{ values[feed.name] = try feed.value() }}
    let provider = try MLDictionaryFeatureProvider(dictionary: values)
    t0 = nowMs()
    _ = try model.prediction(from: provider)
    let firstPrediction = nowMs() - t0
    let after = footprintMB()
    let warmup = 10
    for _ in 0..<warmup {{ _ = try model.prediction(from: provider) }}
    var samples: [Double] = []
    var previous: Double? = nil
    var calm = 0
    var stopped = "max_runs"
    let start = nowMs()
    while samples.count < 2000 {{
        for _ in 0..<25 {{
            let t = nowMs()
            _ = try model.prediction(from: provider)
            samples.append(nowMs() - t)
        }}
        let m = median(samples)
        if let p = previous, samples.count >= 50 {{
            calm = abs(m - p) <= 0.005 * p ? calm + 1 : 0
            if calm >= 3 {{ stopped = "stable"; break }}
        }}
        previous = m
        if nowMs() - start >= 3000 && samples.count >= 50 {{ stopped = "max_seconds"; break }}
    }}
    let seconds = (nowMs() - start) / 1000
    let sorted = samples.sorted()
    let mean = samples.reduce(0, +) / Double(samples.count)
    let variance = samples.map {{ ($0 - mean) * ($0 - mean) }}.reduce(0, +) / Double(samples.count)
    let med = percentile(sorted, 50)
    var memory: [String: Any] = ["measured": false, "unit": "MB", "peak": NSNull(),
                                 "why": "not measured: task_info(TASK_VM_INFO) failed"]
    if let b = before, let a = after {{
        memory = ["measured": true, "unit": "MB", "peak": max(a - b, 0),
                  "what": "rise of the app's phys_footprint after loading and predicting once (current, not peak)"]
    }}
    let inputs: [[String: Any]] = target.inputs.map {{ ["name": $0.name, "shape": $0.shape] as [String: Any] }}
    let environment: [String: Any] = [
        "device": deviceName(), "os": osName(),
        "versions": ["os": osName(), "swift_benchmark": "1", "playbook_schema": "{schema}"] as [String: String],
    ]
    let load: [String: Any] = [
        "measured": true, "unit": "ms", "first": firstLoad, "cached": cachedLoad,
        "what": "first MLModel(contentsOf:configuration:) of the compiled model, then a second (cached) load",
    ]
    let first: [String: Any] = ["measured": true, "unit": "ms", "value": firstPrediction,
                                "what": "first prediction after the cached load"]
    let latency: [String: Any] = [
        "unit": "ms", "median": med, "p90": percentile(sorted, 90), "p99": percentile(sorted, 99), "mean": mean,
        "cv": mean > 0 ? variance.squareRoot() / mean : 0, "fps": 1000 / med, "runs": samples.count,
        "warmup": warmup, "stopped": stopped, "seconds": seconds, "samples": samples,
    ]
    let energy: [String: Any] = ["measured": false, "unit": "J", "per_inference": NSNull(),
                                 "mah_per_inference": NSNull(), "source": NSNull(),
                                 "why": "not measured: the generated Swift benchmark reads no energy counter"]
    let plan: [String: Any] = await computePlan(url, configuration)
    let measurement: [String: Any] = [
        "model": playbookModel, "stage": target.stage, "variant": target.variant, "package_sha256": target.sha256,
        "backend": "coreml", "tier": "device", "setting": "coreml \(unitName)", "compute_units": unitName,
        "threads": "runtime", "batch": 1, "inputs": inputs, "environment": environment, "load": load,
        "first_prediction": first, "latency": latency, "memory": memory, "energy": energy, "compute_plan": plan,
        "timestamp": ISO8601DateFormatter().string(from: Date()),
    ]
    return measurement
}}

/// Benchmarks every package with every compute unit; returns (and prints, and saves) the results JSON.
func runPlaybookBenchmark() async -> String {{
    var measurements: [[String: Any]] = []
    for target in playbookTargets {{
        for (unitName, units) in playbookComputeUnits {{
            do {{ measurements.append(try await measure(target, unitName, units)) }}
            catch {{ print("PlaybookBenchmark: \(target.resource) with \(unitName) failed: \(error)") }}
        }}
    }}
    let document: [String: Any] = ["format": {format}, "schema_version": {schema}, "model": playbookModel,
                                   "produced_by": "PlaybookBenchmark.swift", "measurements": measurements]
    guard let data = try? JSONSerialization.data(withJSONObject: document, options: [.prettyPrinted, .sortedKeys]),
          let text = String(data: data, encoding: .utf8) else {{ return "{{}}" }}
    print(text)
    if let folder = FileManager.default.urls(for: .documentDirectory, in: .userDomainMask).first {{
        try? data.write(to: folder.appendingPathComponent("playbook-benchmark.json"))
    }}
    return text
}}
"""
