"""The ``hwnas`` command: thin Typer commands over the Python API (no logic lives here)."""

from __future__ import annotations

import contextlib
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Optional

import typer

from hwnas.cli.common import COUNT, SECONDS, SEED, emit, engine_table
from hwnas.errors import HwnasError

app = typer.Typer(
    name="hwnas",
    help="Hardware-aware NAS deployment. Jobs: `profile` a device, `search` for a latency target, "
         "`export` an optimized engine; `run` does all three on the embedded default.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
supernet_app = typer.Typer(help="Train and evaluate the weight-sharing supernet.", no_args_is_help=True)
app.add_typer(supernet_app, name="supernet")

JSON_OPT = typer.Option(False, "--json", help="Machine-readable JSON on stdout.")


def _command_line() -> str:
    return "hwnas " + " ".join(shlex.quote(a) for a in sys.argv[1:])


@app.command("supernets")
def supernets_cmd(json_: bool = JSON_OPT) -> None:
    """List the registered supernet families and their search spaces."""
    from hwnas.supernet.registry import DEFAULT_SUPERNET, default_weights_path, get_family, list_supernets

    rows = []
    for name in list_supernets():
        fam = get_family(name)
        w = default_weights_path(name)
        rows.append({"name": name, "default": name == DEFAULT_SUPERNET, "kind": fam.kind, "dataset": fam.dataset,
                     "classes": fam.n_classes, "in_channels": fam.in_channels, "space": fam.space.to_dict(),
                     "capabilities": sorted(fam.capabilities), "summary": fam.describe(),
                     "shipped_weights": str(w) if w else None})

    def human(rs):
        for r in rs:
            flag = " (default)" if r["default"] else ""
            wt = "shipped weights" if r["shipped_weights"] else "no shipped weights: pass --weights"
            typer.echo(f"{r['name']}{flag}: {r['summary']}; {wt}")

    emit(rows, json_, human)


@app.command("sample")
def sample_cmd(
    supernet: str = typer.Option("mbv3_fmnist", help="Supernet family."),
    which: str = typer.Option("random", help="random | min | max"),
    seed: int = typer.Option(0, help="Seed for random sampling.", callback=SEED),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Write the arch JSON here."),
    json_: bool = JSON_OPT,
) -> None:
    """Write an arch file (random, smallest or largest subnet) that other commands take."""
    import json

    from hwnas.errors import ArchError
    from hwnas.formats.common import write_json
    from hwnas.supernet.registry import get_family

    sp = get_family(supernet).space
    if which not in ("random", "min", "max"):
        raise ArchError(f"--which {which!r} is not one of random, min, max")
    arch = {"random": lambda: sp.sample(seed), "min": sp.min_arch, "max": sp.max_arch}[which]()
    res = {"arch": arch, "arch_id": sp.arch_id(arch), "supernet": supernet}
    if out is not None:
        write_json(out, arch)
        res["path"] = str(out)
    emit(res, json_, lambda r: typer.echo(json.dumps(r["arch"]) if out is None else
                                          f"wrote {out} ({r['arch_id']})"))


@app.command("export")
def export_cmd(
    arch: str = typer.Option(..., "--arch", help="Arch JSON file (or inline JSON)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output file (.onnx / .engine / .xml); a manifest OUT.json goes beside it."),
    supernet: str = typer.Option("mbv3_fmnist", help="Supernet family."),
    weights: Optional[Path] = typer.Option(None, help="Supernet state dict (default: the shipped weights)."),
    fmt: str = typer.Option("onnx", "--format", help="Export format: onnx | onnx-int8 | best | openvino | tensorrt "
                                                     "(hwnas.formats.list_formats())."),
    batch: int = typer.Option(1, help="Static batch size.", callback=COUNT),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="Make the batch dimension dynamic."),
    no_optimize: bool = typer.Option(False, "--no-optimize", help="Skip graph optimization (onnxslim)."),
    device: Optional[str] = typer.Option(None, "--device", "-d", help="Measure the result on this device "
                                         "(onnx-int8 and best default: ort-cpu-1t; tensorrt: the tensorrt spec). "
                                         "best: time ORT FP32, ORT INT8 and OpenVINO candidates there, keep the "
                                         "fastest that passes the accuracy gate."),
    fp16: bool = typer.Option(False, "--fp16", help="TensorRT: FP16 engine."),
    int8: bool = typer.Option(False, "--int8", help="TensorRT: INT8 engine from the explicit Q/DQ model; "
                                                    "OpenVINO: NNCF INT8 IR."),
    int8_mode: Optional[str] = typer.Option(None, "--int8-mode", help="onnx-int8: static (QDQ, calibrated) | dynamic "
                                            "(int8 MatMul, ranges at run time) [default: the family's preference: "
                                            "static for CNNs, dynamic for vit_fmnist]."),
    calibration: Optional[Path] = typer.Option(None, "--data", "--calibration",
                                               help="Your images for BN recalibration, INT8 calibration and the "
                                                    "accuracy checks: an image folder (one folder per class), "
                                                    "train/ and val/ folders, or an .npz (default: the family's "
                                                    "shipped set; 'none': keep the supernet's BN statistics)."),
    time_cap: Optional[float] = typer.Option(None, help="Seconds of timed runs per latency measurement.",
                                             callback=SECONDS),
    json_: bool = JSON_OPT,
) -> None:
    """Export a subnet as a verified engine with a manifest."""
    import hwnas.jobs as jobs
    from hwnas.errors import ExportError

    if fp16 and int8:
        raise ExportError("choose one of --fp16 and --int8")
    if (fp16 and fmt != "tensorrt") or (int8 and fmt not in ("tensorrt", "openvino")):
        raise ExportError("--fp16 selects the TensorRT precision and --int8 the TensorRT or OpenVINO one; use "
                          "--format onnx-int8 for ONNX Runtime INT8, or --format best to let measurement choose")
    opts = {"precision": "fp16" if fp16 else "int8"} if (fp16 or int8) else {}
    if int8_mode is not None:
        if fmt != "onnx-int8":
            raise ExportError("--int8-mode applies to --format onnx-int8 (--format best builds both schemes where "
                              "the family asks for them)")
        if int8_mode not in ("static", "dynamic"):
            raise ExportError(f"--int8-mode {int8_mode!r} is not one of static, dynamic")
        opts["mode"] = int8_mode
    res = jobs.export(arch, out, supernet=supernet, weights=weights, format=fmt, batch=batch,
                      dynamic_batch=dynamic_batch, optimize=not no_optimize, command=_command_line(),
                      device=device, calibration=calibration, time_cap_s=time_cap, **opts).to_dict()

    def human(m):
        chk = m.get("output_check") or {}
        typer.echo(f"wrote {m['path']} ({m['format']}, {m['precision']}, arch {m['arch_id']})")
        if chk:
            typer.echo(f"  check vs PyTorch on {chk.get('inputs', 'validation images')}: max abs err "
                       f"{chk['max_abs_err']:.2e}, top-1 agreement {chk['top1_agreement']:.4f}")
        acc, lat = m.get("accuracy") or {}, m.get("latency") or {}
        if "top1_int8" in acc:
            typer.echo(f"  top-1 on {acc['split']}: FP32 {100 * acc['top1_fp32']:.2f}%, INT8 {100 * acc['top1_int8']:.2f}%, "
                       f"agreement {100 * acc['agreement_int8_vs_fp32']:.2f}%")
        elif acc.get("top1") is not None:
            typer.echo(f"  top-1 on {acc['split']}: {100 * acc['top1']:.2f}% (PyTorch {100 * acc['top1_pytorch']:.2f}%)")
        if "int8_over_fp32" in lat:
            typer.echo(f"  latency on {lat['fp32']['device']}: FP32 {lat['fp32']['median_ms']:.4f} ms (isolated), INT8 "
                       f"{lat['int8']['median_ms']:.4f} ms (INT8/FP32 {lat['int8_over_fp32']:.3f}, paired in blocks)")
        elif lat.get("median_ms") is not None and not m.get("selection"):
            typer.echo(f"  latency of this file on {lat.get('device')}: {lat['median_ms']:.4f} ms "
                       f"({lat.get('how') or 'isolated'})")
        sel = m.get("selection")
        if sel:
            typer.echo(f"  candidates on {sel['device']} (timed paired with ort-fp32 in alternating blocks; latency = "
                       "the ratio x ort-fp32's isolated timing in this run):")
            engine_table(sel["candidates"])
            typer.echo(f"  chosen: {sel['winner']}: {sel['reason']}")
            if sel.get("int8_line"):
                typer.echo(f"  {sel['int8_line']}")
        if m.get("fp32") and m["fp32"].get("path") != m.get("path"):
            typer.echo(f"  FP32 model {m['fp32'].get('path')}")
        typer.echo(f"  manifest {m['manifest']}")

    emit(res, json_, human)


class Terminated(SystemExit):
    """SIGTERM (CI cancellation, ``timeout``, systemd), raised in the main thread as ``SystemExit(143)`` so it
    unwinds like Ctrl-C (no ``except Exception`` swallows it; Typer does not turn it into another exit code):
    the atomic writers remove their temporary files and the stores close their connections."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


def _on_sigterm(signum: int, frame: object) -> None:
    # a second SIGTERM while the first unwinds: stop at once, as an unhandled SIGTERM would
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise Terminated()


@contextlib.contextmanager
def _sigterm_unwinds():
    """While the command runs, SIGTERM raises ``Terminated`` in the main thread (only it can set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: user errors print one line and exit 1, never a traceback.

    ``HwnasError`` and ``OSError`` (the environment: a missing, unwritable or misplaced path) are one line
    and exit 1; Ctrl-C exits 130 and SIGTERM 143, both after the outputs in progress are cleaned up.
    """
    from hwnas.cli import commands  # registers the job commands on hwnas.cli.main.app
    from hwnas.cli.common import os_error_line

    try:
        with _sigterm_unwinds():
            commands.app(args=argv, standalone_mode=True)
    except HwnasError as exc:
        typer.echo(f"hwnas: error: {_one_line(str(exc))}", err=True)
        raise SystemExit(1) from None
    except OSError as exc:
        typer.echo(f"hwnas: error: {os_error_line(exc)}", err=True)
        raise SystemExit(1) from None
    except Terminated as exc:
        typer.echo("hwnas: terminated (SIGTERM); no partial output was left", err=True)
        raise SystemExit(exc.code) from None
    except KeyboardInterrupt:
        typer.echo("hwnas: interrupted", err=True)
        raise SystemExit(130) from None
    except Exception as exc:
        # SIGTERM inside code that wraps exceptions (an import creating dataclasses, a library's
        # callback) arrives as another error caused by Terminated: it is still a termination
        if _sigterm_caused(exc):
            typer.echo("hwnas: terminated (SIGTERM); no partial output was left", err=True)
            raise SystemExit(128 + signal.SIGTERM) from None
        raise


def _sigterm_caused(exc: BaseException) -> bool:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, Terminated):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return "; ".join(lines) if lines else "(no message)"


if __name__ == "__main__":  # python -m hwnas.cli.main: run the registered app, not this copy's
    from hwnas.cli.main import main as _main

    _main()
