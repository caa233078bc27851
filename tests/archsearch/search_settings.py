"""Protocol settings shared by the search tests (a uniquely named module, importable from test modules)."""

from hwnas.devices import ProtocolSettings

FAST = ProtocolSettings(warmup_runs=3, warmup_s=0.02, min_runs=10, time_cap_s=0.1)
