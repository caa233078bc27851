"""Child process for the kill -9 test: profiles every .onnx file in a directory into a store.

Usage: python devices_profile_child.py STORE MODELS_DIR TIME_CAP_S [CHUNK [ANCHOR.onnx]]
With ANCHOR.onnx every model is timed anchored to it (calibrated once per store).
Prints one line per arch as it finishes ("measured a03", "skipped a01", ...).
"""

from __future__ import annotations

import sys
from pathlib import Path

from hwnas.devices import ProtocolSettings, Store, load_device, profile_archs


def main() -> None:
    store_path, models_dir, cap = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
    chunk = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    anchor = Path(sys.argv[5]) if len(sys.argv) > 5 else None
    files = sorted(models_dir.glob("*.onnx"))
    archs = [(f.stem, {"file": f.name}) for f in files]
    # two interleaved visits per model, in chunks of CHUNK models
    settings = ProtocolSettings(warmup_runs=3, warmup_s=0.02, min_runs=10**6, max_runs=10**6, time_cap_s=cap,
                                windows=1, min_timed_s=0.0, rounds=2)
    with Store(store_path) as store:
        summary = profile_archs(
            store,
            load_device("ort-cpu-1t"),
            archs,
            lambda arch: (Path(arch["path"]) if "path" in arch else models_dir / arch["file"], None),
            "kill-test",
            settings=settings,
            progress=lambda ev: print(ev.status, ev.arch_id, flush=True),
            chunk_size=chunk,
            anchor=None if anchor is None else ("anchor", {"path": str(anchor)}),
        )
    print("done", summary["measured"], summary["skipped"], flush=True)


if __name__ == "__main__":
    main()
