"""Settings shared by the predictor tests (a uniquely named module, importable from test modules;
``from conftest import ...`` is ambiguous when several test folders have a conftest)."""

from __future__ import annotations

from hwnas.devices import ProtocolSettings
from hwnas.devices.spec import DeviceSpec

# short but stable: tiny models run thousands of times in 60 ms
FAST = ProtocolSettings(warmup_runs=5, warmup_s=0.0, min_runs=15, time_cap_s=0.06, rel_ci=0.02)

NOOPT_DEVICE = DeviceSpec(name="ort-cpu-1t-noopt", backend="ort",
                          options={"intra_op_threads": 1, "graph_optimization_level": "disable"})
STAT = "min_ms"
