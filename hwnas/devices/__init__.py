"""Devices: specs, backends, the measurement protocol, fingerprints, the store, the edge agent.

Importing this package is cheap: onnxruntime, torch and tensorrt are imported only when used.
"""

from hwnas.devices.backends import create_backend, fingerprint_for, list_backends, register_backend, runtime_config
from hwnas.devices.fingerprint import Fingerprint, host_info, make_fingerprint
from hwnas.devices.modelfile import check_onnx_bytes, check_onnx_file
from hwnas.devices.profile import ProfileEvent, profile_archs, profile_onnx_file, stratified_sample
from hwnas.devices.protocol import Measurement, ProtocolSettings, run_protocol
from hwnas.devices.spec import DeviceInfo, DeviceSpec, list_devices, load_device
from hwnas.devices.store import Store

__all__ = [
    "DeviceInfo",
    "DeviceSpec",
    "Fingerprint",
    "Measurement",
    "ProfileEvent",
    "ProtocolSettings",
    "Store",
    "check_onnx_bytes",
    "check_onnx_file",
    "create_backend",
    "fingerprint_for",
    "host_info",
    "list_backends",
    "list_devices",
    "load_device",
    "make_fingerprint",
    "profile_archs",
    "profile_onnx_file",
    "register_backend",
    "run_protocol",
    "runtime_config",
    "stratified_sample",
]
