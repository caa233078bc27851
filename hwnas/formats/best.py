"""``--format best``: the engine chosen by measurement on the target device.

Which engine runs a subnet fastest depends on the model, the runtime and the CPU (INT8 pays where the
CPU has VNNI or AMX and the network is big enough; OpenVINO beats ONNX Runtime on some Intel CPUs and
models and loses on others), so only a measurement on the target can say.  This format builds every
candidate this machine can run from the one verified FP32 ONNX model:

``ort-fp32``
    the verified FP32 ONNX on ONNX Runtime's CPU EP (the reference);
``ort-int8``
    static QDQ INT8 by :func:`hwnas.formats.onnx_int8.quantize_qdq` (the CPU recipe: SE squeeze as
    GlobalAveragePool, 7-bit weights where the CPU has no VNNI);
``ort-int8-alt``
    the same with the other ``reduce_range`` setting (more accurate or faster, depending on the CPU);
``ort-int8-dynamic``
    dynamic INT8 by :func:`hwnas.formats.onnx_int8.quantize_dynamic_int8`: int8 MatMul/Gemm weights,
    activations quantized at run time (no calibration); built by default for families whose
    ``int8_modes`` include ``"dynamic"`` (transformers);
``openvino-fp32`` / ``openvino-int8`` / ``openvino-int8-alt``
    OpenVINO IR, FP32 and NNCF post-training INT8 (NNCF's defaults; min-max activation ranges without
    fast bias correction), where the ``openvino`` extra is installed.

Each candidate is evaluated on the validation split and gated: top-1 agreement with the FP32 model
>= ``min_agreement`` (default 99%) and top-1 drop <= ``max_top1_drop`` (default 0.3 points); the gate is
not applied to untrained ``init`` weights, whose near-tied logits make agreement meaningless.  The ones
that pass are timed side by side on the target device in interleaved rounds, each paired with ORT FP32
(median ratio of alternating 10-ms blocks), and the fastest wins if it is at least ``min_speedup`` (default 1.03x)
faster than ORT FP32; otherwise ORT FP32 is kept and the manifest says why.  The winner is written to
``OUT`` (an OpenVINO winner as ``OUT`` with suffix ``.xml`` plus its ``.bin``), with a manifest beside
it that holds every candidate's runtime, precision, latency, speed-up, accuracy and size, and which one
won; ``fp32_out`` also writes the verified FP32 ONNX model (when ORT FP32 wins, the engine is written
there alone, not twice).  Everything is written, or nothing.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from hwnas.errors import ExportError
from hwnas.formats import register_format
from hwnas.formats.common import (Progress, _check_options, build_manifest, export_verified_fp32, load_calibration,
                                  manifest_path, onnx_logits, prepare, resolve_device, top1, val_data, write_json)
from hwnas.io import atomic_outputs

DEFAULT_DEVICE = "ort-cpu-1t"
DEFAULT_MIN_AGREEMENT = 0.99
DEFAULT_MAX_TOP1_DROP = 0.003
DEFAULT_MIN_SPEEDUP = 1.03
CANDIDATES = ("ort-fp32", "ort-int8", "ort-int8-alt", "ort-int8-dynamic", "openvino-fp32", "openvino-int8",
              "openvino-int8-alt")
#: candidates built only for families whose ``int8_modes`` name the scheme (when no list is given)
_MODE_OF = {"ort-int8": "static", "ort-int8-alt": "static", "ort-int8-dynamic": "dynamic",
            "openvino-int8": "static", "openvino-int8-alt": "static"}


@dataclasses.dataclass
class Candidate:
    name: str
    runtime: str
    precision: str
    fmt: str                      # the export format whose file it is: onnx, onnx-int8, openvino
    path: Path
    spec: Any = None              # the DeviceSpec it is timed on
    logits: Callable[[Any], np.ndarray] | None = None
    info: dict = dataclasses.field(default_factory=dict)
    row: dict = dataclasses.field(default_factory=dict)

    def files(self) -> list[Path]:
        return [self.path, self.path.with_suffix(".bin")] if self.fmt == "openvino" else [self.path]


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def nncf_available() -> bool:
    return importlib.util.find_spec("nncf") is not None


def default_candidates(family: Any) -> list[str]:
    """The candidates built when none are named: every one this machine can run (OpenVINO ones where the
    extra is installed) whose INT8 scheme is among the family's ``int8_modes``."""
    ov_ok, modes = openvino_available(), set(family.int8_modes)
    names = [c for c in CANDIDATES if ov_ok or not c.startswith("openvino")]
    if ov_ok and not nncf_available():
        names = [c for c in names if not c.startswith("openvino-int8")]
    return [c for c in names if _MODE_OF.get(c) is None or _MODE_OF[c] in modes]


def _size(c: Candidate) -> int:
    return sum(p.stat().st_size for p in c.files() if p.exists())


def _ov_spec(ort_spec: Any, batch: int, precision: str) -> Any:
    """The OpenVINO device matching the ORT reference: the same thread count, one stream, latency hint."""
    from hwnas.devices import DeviceSpec

    threads = int(ort_spec.options.get("intra_op_threads", 0) or 0)
    name = f"ov-cpu-{threads}t" if threads else "ov-cpu"
    return resolve_device(DeviceSpec(name=name, backend="openvino", batch=batch, precision=precision,
                                     description=f"OpenVINO CPU plugin, {threads or 'all'} inference thread(s), "
                                                 "1 stream, latency hint (matched to " + ort_spec.name + ")",
                                     options={"inference_num_threads": threads, "num_streams": 1,
                                              "performance_hint": "LATENCY", "inference_precision_hint": "f32"},
                                     protocol=dict(ort_spec.protocol)), batch)


def _gate(row: dict, ref_top1: float | None, min_agreement: float, max_drop: float, gated: bool) -> None:
    if not gated:
        row["gate"] = "not applied (untrained weights)"
        row["passed"] = True
        return
    fails = []
    if row["agreement_with_fp32"] < min_agreement:
        fails.append(f"agreement {row['agreement_with_fp32']:.2%} < {min_agreement:.0%}")
    if ref_top1 is not None and row.get("top1") is not None and ref_top1 - row["top1"] > max_drop + 1e-12:
        fails.append(f"top-1 drop {100 * (ref_top1 - row['top1']):.2f} > {100 * max_drop:.2f} points")
    row["passed"] = not fails
    row["gate"] = "passed" if not fails else "failed: " + "; ".join(fails)


@register_format("best", precisions=("fp32", "int8"))
def export_best(arch: Mapping[str, Any], out: str | Path, supernet: str, weights: str | None = None, *,
                batch: int = 1, command: str | None = None, dynamic_batch: bool = False, optimize: bool = True,
                tolerance: float = 1e-4, device: Any = None, measure: bool = True, time_cap_s: float | None = None,
                calibration: str | Path | None = None, candidates: Sequence[str] | None = None,
                min_agreement: float = DEFAULT_MIN_AGREEMENT, max_top1_drop: float = DEFAULT_MAX_TOP1_DROP,
                min_speedup: float = DEFAULT_MIN_SPEEDUP, rounds: int = 3, calib_images: int | None = None,
                fp32_out: str | Path | None = None, progress: Progress | None = None,
                manifest_extra: Mapping[str, Any] | None = None, **options: Any) -> dict:
    """The fastest engine for ``arch`` on ``device`` that passes the accuracy gate, chosen by measurement.

    ``candidates``: names from :data:`CANDIDATES` (default: all this machine can run; an OpenVINO name
    without the ``openvino`` extra is an error).  ``device``: an ONNX Runtime CPU device (default
    ``ort-cpu-1t``); the OpenVINO candidates run on a matching OpenVINO device.  Returns the winner's
    manifest, whose ``selection`` holds the candidates table.
    """
    from hwnas.formats.onnx_int8 import cpu_has_vnni, measure_side_by_side, quantize_dynamic_int8, quantize_qdq

    _check_options("--format best", options)
    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    out = Path(out)
    if dynamic_batch:
        raise ExportError("--format best times static-shape engines; drop --dynamic-batch")
    if not 0.0 <= min_agreement <= 1.0 or not 0.0 <= max_top1_drop <= 1.0:
        raise ExportError(f"min_agreement and max_top1_drop must be within [0, 1]; got {min_agreement}, {max_top1_drop}")
    if not (min_speedup >= 1.0 and np.isfinite(min_speedup)):
        raise ExportError(f"min_speedup must be a finite number >= 1; got {min_speedup}")
    if rounds < 1:
        raise ExportError(f"rounds must be >= 1; got {rounds}")
    ov_ok = openvino_available()
    if candidates is None:
        names = None  # default_candidates(family), once the family is known
    else:
        names = list(dict.fromkeys(candidates))
        unknown = [c for c in names if c not in CANDIDATES]
        if unknown:
            raise ExportError(f"unknown candidate(s) {', '.join(unknown)}; choose from {', '.join(CANDIDATES)}")
        if "ort-fp32" not in names:
            names.insert(0, "ort-fp32")  # the reference every speed-up is measured against
        if any(c.startswith("openvino") for c in names) and not ov_ok:
            raise ExportError("OpenVINO candidates need OpenVINO: pip install 'hwnas[openvino]'")
        if any(c.startswith("openvino-int8") for c in names) and not nncf_available():
            raise ExportError("the openvino-int8 candidate needs NNCF: pip install 'hwnas[openvino]'")
    spec32 = resolve_device(DEFAULT_DEVICE if device is None else device, batch, "fp32")
    if spec32.backend != "ort" or spec32.options.get("provider", "CPUExecutionProvider") != "CPUExecutionProvider":
        raise ExportError(f"--format best compares CPU engines against ONNX Runtime's CPU EP; device {spec32.name!r} "
                          "is not an ONNX Runtime CPU device (use e.g. ort-cpu-1t)")
    spec8 = dataclasses.replace(spec32, precision="int8")
    fp32_out = Path(fp32_out) if fp32_out is not None else None

    say("extracting the subnet and recalibrating BN")
    net, a, sub, recal = prepare(supernet, weights, arch, calibration)
    if names is None:
        names = default_candidates(net.family)
    specs_ov = {}
    if any(c.startswith("openvino") for c in names):
        specs_ov = {p: _ov_spec(spec32, batch, p) for p in ("fp32", "int8")}
    shape = net.family.input_shape(a)
    x, labels, source = val_data(net, shape[-1], calibration)
    needs_cal = any(c not in ("ort-fp32", "ort-int8-dynamic") for c in names)
    gated = net.weights_hash != "init"
    cal = load_calibration(net, shape[-1], calibration) if needs_cal else None
    cal_source = (f"{calibration}" if calibration is not None else f"{net.family.name} shipped calibration set")
    if needs_cal and cal is None and not gated and str(calibration) != "none":
        # untrained weights: accuracy means nothing, so random images serve to place the INT8 scales for timing
        cal = torch.from_numpy(np.random.default_rng(0).standard_normal((64, *shape)).astype(np.float32))
        cal_source = "64 random normal images (untrained weights: the INT8 candidates are for latency only)"
    if needs_cal and cal is None:
        raise ExportError(f"INT8 calibration needs real images and supernet {net.family.name!r} has no shipped "
                          "calibration set: pass its images with --data DIR, or candidates=['ort-fp32', "
                          "'openvino-fp32']")
    if cal is not None and calib_images is not None:
        cal = cal[:calib_images]
    vnni = cpu_has_vnni()

    with tempfile.TemporaryDirectory(prefix="hwnas-best-") as td:
        td = Path(td)
        p32 = td / "ort-fp32.onnx"
        opt_info, ref, l32, chk32 = export_verified_fp32(sub, p32, shape, batch, False, optimize, x, source,
                                                         tolerance, "FP32 ONNX model", say)
        cands: dict[str, Candidate] = {"ort-fp32": Candidate("ort-fp32", "onnxruntime", "fp32", "onnx", p32, spec32,
                                                             info={"output_check": chk32.to_dict()})}
        cands["ort-fp32"].row = {"top1": top1(l32, labels), "agreement_with_fp32": 1.0, "passed": True,
                                 "gate": "reference"}
        auto_rr = vnni is False
        for name, rr in (("ort-int8", auto_rr), ("ort-int8-alt", not auto_rr)):
            if name not in names:
                continue
            say(f"{name}: quantizing (QDQ, reduce_range={rr})")
            dst = td / f"{name}.onnx"
            info = quantize_qdq(p32, dst, cal, target="ort", reduce_range=rr, node_groups=net.family.node_groups)
            cands[name] = Candidate(name, "onnxruntime", "int8", "onnx-int8", dst, spec8, info=info)
        if "ort-int8-dynamic" in names:
            say("ort-int8-dynamic: quantizing (dynamic, int8 MatMul/Gemm weights)")
            dst = td / "ort-int8-dynamic.onnx"
            info = quantize_dynamic_int8(p32, dst, node_groups=net.family.node_groups)
            cands["ort-int8-dynamic"] = Candidate("ort-int8-dynamic", "onnxruntime", "int8", "onnx-int8", dst, spec8,
                                                  info=info)
        if any(c.startswith("openvino") for c in names):
            from hwnas.formats.openvino import NNCF_ATTEMPTS, onnx_to_ir

            if "openvino-fp32" in names:
                say("openvino-fp32: converting to OpenVINO IR")
                dst = td / "openvino-fp32.xml"
                info = onnx_to_ir(p32, dst)
                cands["openvino-fp32"] = Candidate("openvino-fp32", "openvino", "fp32", "openvino", dst,
                                                   specs_ov["fp32"], info=info)
            for name, settings in (("openvino-int8", NNCF_ATTEMPTS[0]), ("openvino-int8-alt", NNCF_ATTEMPTS[1])):
                if name not in names:
                    continue
                say(f"{name}: NNCF post-training quantization ({settings})")
                dst = td / f"{name}.xml"
                info = onnx_to_ir(p32, dst, cal, batch, settings)
                cands[name] = Candidate(name, "openvino", "int8", "openvino", dst, specs_ov["int8"], info=info)
        ref_top1 = cands["ort-fp32"].row["top1"]
        for c in cands.values():
            if c.name == "ort-fp32":
                continue
            say(f"{c.name}: evaluating on {source}")
            if c.runtime == "openvino":
                from hwnas.formats import openvino as ovf

                lc = ovf.ir_logits(c.path, x)
            else:
                lc = onnx_logits(c.path, x)
            c.row = {"top1": top1(lc, labels), "agreement_with_fp32": float((lc.argmax(1) == l32.argmax(1)).mean()),
                     "max_abs_err_vs_pytorch": float(np.abs(lc - ref).max())}
            _gate(c.row, ref_top1, min_agreement, max_top1_drop, gated)
        passing = [c for c in cands.values() if c.row["passed"]]
        lat: dict[str, dict] = {}
        if measure:
            # the ones that fail the gate are timed too, for the record (what INT8 would have bought), never chosen
            say(f"timing {len(cands)} candidate(s) side by side on {spec32.name}, paired with ort-fp32")
            lat = measure_side_by_side({c.name: (c.path, c.spec) for c in cands.values()}, time_cap_s=time_cap_s,
                                       rounds=rounds)
        ref_ms = lat["ort-fp32"]["median_ms"] if lat else None
        for c in cands.values():
            c.row.update(name=c.name, runtime=c.runtime, precision=c.precision, format=c.fmt,
                         device=c.spec.name if c.spec is not None else None, size_bytes=_size(c),
                         runtime_version=_runtime_version(c.runtime))
            if c.name in lat:
                e = lat[c.name]
                c.row["latency_ms"] = e["median_ms"]
                ratio = e.get("over_first", e["median_ms"] / ref_ms)  # paired when every backend is local
                c.row["speedup_vs_ort_fp32"] = 1.0 if c.name == "ort-fp32" else 1.0 / ratio
                if "rounds_ratio" in e:
                    c.row["rounds_speedup"] = [round(1.0 / r, 4) for r in e["rounds_ratio"]]
                c.row["latency"] = e
            else:
                c.row["latency_ms"] = None
        timed = [c for c in passing if c.row.get("latency_ms") is not None]
        fastest = max(timed, key=lambda c: c.row["speedup_vs_ort_fp32"]) if timed else cands["ort-fp32"]
        if fastest.name != "ort-fp32" and fastest.row["speedup_vs_ort_fp32"] >= min_speedup:
            win = fastest
            reason = (f"{win.name} is {win.row['speedup_vs_ort_fp32']:.2f}x ORT FP32 on {spec32.name}"
                      + (" and passes the accuracy gate" if gated else " (accuracy gate not applied: untrained weights)"))
        else:
            win = cands["ort-fp32"]
            if not measure:
                reason = "no latency measured (measure=False): ORT FP32 kept"
            elif fastest.name == "ort-fp32" or not timed:
                others = [c.name for c in cands.values() if c.name != "ort-fp32"]
                reason = (f"no candidate was faster than ORT FP32 on {spec32.name}"
                          + (f" ({', '.join(others)} tried)" if others else ""))
            else:
                reason = (f"no candidate was at least {min_speedup:.2f}x ORT FP32 on {spec32.name} (fastest: "
                          f"{fastest.name} at {fastest.row['speedup_vs_ort_fp32']:.2f}x); ORT FP32 kept")
        i8 = [c for c in cands.values() if c.precision == "int8"]
        int8_line = None
        if i8 and not any(c.row["passed"] and (c.row.get("speedup_vs_ort_fp32") or 0) >= min_speedup for c in i8):
            def said(c: Candidate) -> str:
                sp = c.row.get("speedup_vs_ort_fp32")
                return (f"{c.name} {sp:.2f}x" if sp else c.name) + ("" if c.row["passed"] else " (fails the accuracy gate)")

            int8_line = (f"no INT8 candidate passed the accuracy gate at >= {min_speedup:.2f}x ORT FP32 on {spec32.name}: "
                         + ", ".join(map(said, i8))
                         + (" (this CPU has no VNNI/AMX 8-bit dot products)" if vnni is False else ""))
        if win.name == "ort-fp32" and fp32_out is not None:
            final, fp32_out = fp32_out, None  # the verified FP32 model is the engine: one file, not two copies
        else:
            final = out if win.fmt != "openvino" else out.with_suffix(".xml")
        targets = [final] + ([final.with_suffix(".bin")] if win.fmt == "openvino" else []) + [manifest_path(final)]
        if fp32_out is not None:
            if fp32_out.resolve() in {p.resolve() for p in targets}:
                raise ExportError(f"fp32_out {fp32_out} would overwrite the chosen engine; pass another path")
            targets += [fp32_out, manifest_path(fp32_out)]
        selection = {
            "device": spec32.name,
            "cpu_vnni": vnni,
            "calibration": cal_source if cal is not None else None,
            "gate": {"min_agreement": min_agreement, "max_top1_drop": max_top1_drop, "split": source,
                     "applied": gated},
            "min_speedup": min_speedup,
            "method": (f"candidates loaded together and measured in {rounds} interleaved rounds, each paired with "
                       "ort-fp32 (median ratio of alternating 10-ms blocks); latency_ms = ratio x ort-fp32's "
                       "isolated latency in this run (the file alone, not anchored)"),
            "candidates": [c.row for c in cands.values()],
            "winner": win.name,
            "reason": reason,
            "int8_line": int8_line,
            "profile_with": win.spec.name if win.spec is not None else spec32.name,
        }
        acc = {"split": source, "top1_pytorch": top1(ref, labels), "top1_fp32": ref_top1, "top1": win.row["top1"],
               "agreement_with_fp32": win.row["agreement_with_fp32"]}
        common = dict(net=net, arch=a, batch=batch, shape=shape, check_inputs=source, recalibrated=recal,
                      command=command, dynamic_batch=False)
        extra = dict(manifest_extra or {})
        with atomic_outputs(*targets) as tmps:
            tmp = dict(zip(targets, tmps))
            for src, dst in zip(win.files(), targets):
                shutil.copyfile(src, tmp[dst])
            man = build_manifest(fmt=win.fmt, precision=win.precision, check=chk32 if win.name == "ort-fp32" else None,
                                 optimize=opt_info, accuracy=acc, latency=win.row.get("latency"),
                                 runtime={"name": win.runtime, "version": _runtime_version(win.runtime)},
                                 selection=selection, **({"quantization": win.info} if win.precision == "int8" else {}),
                                 **({"conversion": win.info} if win.fmt == "openvino" and win.precision == "fp32" else {}),
                                 **common, **extra)
            if win.name != "ort-fp32":
                man["output_check_vs_pytorch"] = {"max_abs_err": win.row.get("max_abs_err_vs_pytorch"),
                                                  "top1_agreement_with_fp32": win.row["agreement_with_fp32"]}
            man["export_seconds"] = round(time.perf_counter() - t0, 2)
            write_json(tmp[manifest_path(final)], man)
            if fp32_out is not None:
                shutil.copyfile(p32, tmp[fp32_out])
                m32 = build_manifest(fmt="onnx", precision="fp32", check=chk32, optimize=opt_info,
                                     accuracy={"split": source, "top1_pytorch": acc["top1_pytorch"], "top1": ref_top1},
                                     latency=cands["ort-fp32"].row.get("latency"), **common, **extra)
                write_json(tmp[manifest_path(fp32_out)], m32)
    man.update(path=str(final), manifest=str(manifest_path(final)))
    man["fp32"] = ({"path": str(fp32_out), "manifest": str(manifest_path(fp32_out))} if fp32_out is not None
                   else {"path": str(final), "manifest": str(manifest_path(final))} if win.name == "ort-fp32" else None)
    return man


def _runtime_version(runtime: str) -> str | None:
    try:
        if runtime == "openvino":
            import openvino

            return openvino.__version__
        import onnxruntime

        return onnxruntime.__version__
    except ImportError:
        return None
