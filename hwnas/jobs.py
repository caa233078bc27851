"""The Python API: one function per job, each returning a frozen dataclass with ``to_dict()``.

    import hwnas
    prof = hwnas.profile("ort-cpu-1t", samples=100)                       # 1. profile a device
    found = hwnas.search("ort-cpu-1t", latency="0.25ms")                    # 2. search for a budget
    eng = hwnas.export(found.best_arch, "best.int8.onnx", format="onnx-int8")  # 3. export an engine

The CLI (``hwnas ...``) and ``hwnas run`` only parse arguments and call these.  Every job takes a
family by registered name (or a ``SupernetFamily``) and a device by spec name, ``.toml`` path or
``DeviceSpec``; files go where the caller says, written whole or not at all.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from hwnas.errors import DataError, PredictorError, SearchError
from hwnas.io import job_tempdir

DEFAULT_DEVICE = "ort-cpu-1t"
DEFAULT_STORE = Path("hwnas-out/store.sqlite")
Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def _jsonable(d: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out[k] = v.to_dict() if hasattr(v, "to_dict") else v
    return out


@dataclass(frozen=True)
class _Result:
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        details = d.pop("details", {}) or {}
        return _jsonable({**details, **d})

    def __getitem__(self, key: str) -> Any:  # dict-style access to every figure the job reported
        return self.to_dict()[key]


# ---------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class ProfileResult(_Result):
    """What ``profile`` measured: counts, rates, the anchor and the store the rows went to."""

    device: str
    supernet: str
    store: str
    measured: int
    skipped: int
    failed: list = field(default_factory=list)
    wall_s: float = 0.0
    subnets_per_min: float = 0.0
    anchor: dict | None = None
    fp_hash: str = ""
    # what the run's drift check of the anchor calibration found and did, and what the user should know
    calibration: dict | None = None
    warnings: list = field(default_factory=list)
    # fleet profiling: each subnet taken from a board that failed, why, and the board that measured it
    retries: list = field(default_factory=list)
    details: dict = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class ModelProfileResult(_Result):
    """The latency of one ONNX file on a device (``profile_model``)."""

    model: str
    device: str
    median_ms: float
    measurement: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class FitResult(_Result):
    """A fitted predictor's held-out metrics and where its artifact went."""

    kind: str
    target: str
    supernet: str
    n_train: int
    n_test: int
    metrics: dict
    out: str | None = None
    details: dict = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Prediction(_Result):
    """Predictions of one predictor for some archs (``predict``)."""

    target: str
    unit: str
    supernet: str
    arch_ids: list
    values: list
    predictor: str = ""
    device: str | None = None


@dataclass(frozen=True)
class SearchJobResult(_Result):
    """The chosen arch (measured on the device), the budget, the predictors used and the output files."""

    best_arch: dict
    best_arch_id: str
    measured_latency_ms: float
    predicted_latency_ms: float
    accuracy: float
    accuracy_evaluated: bool
    budget_ms: float
    device: str
    supernet: str
    files: dict
    latency_predictor: dict
    accuracy_predictor: dict
    n_predicted: int = 0
    wall_s: float = 0.0
    # the answer's fresh confirmation (new session, anchored, longer timing) and its 95% interval
    confirmed_latency_ms: float | None = None
    confirmed_ci95_ms: tuple | None = None
    confirmed_within_budget: bool | None = None
    result: Any = field(default=None, repr=False, compare=False)  # the full ``SearchResult``

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "result"}
        if self.result is not None:
            d["search"] = self.result.to_dict()
        return _jsonable(d)


@dataclass(frozen=True)
class ExportResult(_Result):
    """An exported engine: its file, manifest, format, checks and measured latency."""

    path: str
    manifest_path: str
    format: str
    precision: str
    arch_id: str
    manifest: dict = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable({**self.manifest, "path": self.path, "manifest": self.manifest_path})


@dataclass(frozen=True)
class RunResult(_Result):
    """The main job's summary (``hwnas run``)."""

    summary: dict

    def to_dict(self) -> dict[str, Any]:
        return dict(self.summary)


# ---------------------------------------------------------------------------------- the supernet
def create_supernet(name: Any = "mbv3_fmnist", weights: str | Path | None = None, pretrained: bool = True):
    """A family's torch supernet by registered name: shipped weights unless ``weights`` (a state dict
    path) or ``pretrained=False`` say otherwise.  ``net.extract(arch)`` gives a deployable subnet."""
    from hwnas.supernet.registry import create_supernet as _create

    return _create(name, weights=weights, pretrained=pretrained)


def supernet_model_builder(supernet: Any, backend: str, workdir: str | Path, batch: int = 1, optimize: bool = True):
    """``build_model`` for ``profile_archs``: extract each arch (no recalibration: latency does not
    depend on normalization statistics); unless the backend is torch, export it to static-shape ONNX
    through the pipeline ``hwnas export`` ships (torch.onnx, then onnxslim with ``optimize``), so the
    latency measured is that of the file export writes."""
    from hwnas.formats.common import build_fp32_onnx

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    def build(arch: dict):
        sub = supernet.extract(arch, calibration=None).eval()
        shape = supernet.family.input_shape(arch)
        if backend.startswith("torch"):
            return sub, (batch, *shape)
        path = workdir / f"{supernet.space.arch_id(arch)}.onnx"
        build_fp32_onnx(sub, path, shape, batch, False, optimize)
        return path, None

    return build


def anchor_of(family: Any) -> tuple[str, dict]:
    """``(arch_id, arch)`` of the family's reference arch for anchored timing."""
    arch = family.default_anchor()
    return family.space.arch_id(arch), arch


# ---------------------------------------------------------------------------------- 1. profile
def profile(device: Any = DEFAULT_DEVICE, supernet: Any = "mbv3_fmnist", samples: int = 100, *,
            store: str | Path = DEFAULT_STORE, weights: str | Path | None = None, seed: int = 0,
            time_cap_s: float | None = None, progress: Callable[[Any], None] | None = None,
            fleet: str | Path | None = None, ray_address: str | None = None,
            board_wait_s: float = 120.0) -> ProfileResult:
    """Measure the real latency of ``samples`` subnets (stratified small/medium/large; the smallest and
    largest included) on ``device`` into the SQLite ``store``, with anchored timing.  Resumable: subnets
    already in the store for this device fingerprint are skipped.  Latency does not depend on weight
    values, so families without weights are profiled on their initialized weights.

    A list of devices (or a ``fleet`` file naming them) is profiled at once on Ray
    (``hwnas.fleet.profile_fleet``): boards of one device kind share the work, other kinds get their
    own rows; ``ray_address`` names a cluster (default: a local Ray instance for this job);
    ``board_wait_s``: how long a device kind may have no board answering before its rest is left.  With a
    ``fleet`` file the boards are its devices plus any ``device`` named other than the default."""
    from hwnas.devices import Store
    from hwnas.devices.profile import ProtocolSettings, as_spec, profile_archs, require_available

    devices = list(device) if isinstance(device, (list, tuple)) else [device]
    if fleet is not None or isinstance(device, (list, tuple)) or ray_address is not None:
        # with a fleet file, the default device is not one of the boards unless named
        named = [] if fleet is not None and devices == [DEFAULT_DEVICE] else devices
        return _profile_fleet(named, supernet, samples, store=store, weights=weights, seed=seed,
                              time_cap_s=time_cap_s, progress=progress, fleet=fleet, ray_address=ray_address,
                              board_wait_s=board_wait_s)
    spec = as_spec(devices[0])
    require_available(spec)
    net, archs = _profile_sample(supernet, samples, weights, seed)
    fam = net.family
    settings = ProtocolSettings.from_mapping(spec.protocol)
    if time_cap_s is not None:
        settings = settings.replace(time_cap_s=time_cap_s)
    with job_tempdir("hwnas-profile-") as tmp, Store(store) as st:
        build = supernet_model_builder(net, spec.backend, tmp, batch=spec.batch)
        summary = profile_archs(st, spec, archs, build, fam.name, settings=settings, progress=progress,
                                delete_models=True, anchor=anchor_of(fam))
    summary.update(device=spec.name, supernet=fam.name, store=str(store))
    return ProfileResult(device=spec.name, supernet=fam.name, store=str(store), measured=summary["measured"],
                         skipped=summary["skipped"], failed=list(summary["failed"]), wall_s=summary["wall_s"],
                         subnets_per_min=summary["subnets_per_min"], anchor=summary.get("anchor"),
                         fp_hash=summary["fp_hash"], calibration=summary.get("calibration"),
                         warnings=list(summary.get("warnings") or []), details=summary)


def _profile_sample(supernet: Any, samples: int, weights: str | Path | None, seed: int) -> tuple[Any, list]:
    """The supernet and the ``samples`` archs ``profile`` measures (stratified by MACs)."""
    from hwnas.devices.profile import stratified_sample

    net = create_supernet(supernet, weights=weights, pretrained=weights is not None)
    fam = net.family
    return net, stratified_sample(net.space, samples, seed, lambda a: fam.arch_cost(a)["macs"])


def _profile_fleet(devices: list, supernet: Any, samples: int, *, store: str | Path, weights: str | Path | None,
                   seed: int, time_cap_s: float | None, progress: Callable[[Any], None] | None,
                   fleet: str | Path | None, ray_address: str | None, board_wait_s: float) -> ProfileResult:
    """``profile`` over several boards on Ray; the devices given plus those of the ``fleet`` file."""
    from hwnas.devices import Store
    from hwnas.devices.profile import as_spec
    from hwnas.fleet import load_fleet_file, profile_fleet

    specs = [as_spec(d) for d in devices]
    if fleet is not None:
        more, address = load_fleet_file(fleet)
        specs += more
        ray_address = ray_address or address
    net, archs = _profile_sample(supernet, samples, weights, seed)
    fam = net.family
    with job_tempdir("hwnas-profile-") as tmp, Store(store) as st:
        builders: dict[int, Any] = {}

        def build(spec: Any, arch: dict) -> Any:
            if spec.batch not in builders:
                builders[spec.batch] = supernet_model_builder(net, "onnx", tmp, batch=spec.batch)
            return builders[spec.batch](arch)

        summary = profile_fleet(st, specs, archs, build, fam.name, time_cap_s=time_cap_s, progress=progress,
                                address=ray_address, board_wait_s=board_wait_s)
    summary.update(supernet=fam.name, store=str(store))
    warnings = [f"{d['device']}: {len(d['unmeasured'])} subnets not measured, {d['gave_up']}; run the same "
                "command again to measure them" for d in summary["devices"] if d["unmeasured"]]
    warnings += [f"board {name} left out: {b['last_error']}" for name, b in summary["boards"].items()
                 if b["group"] < 0]
    return ProfileResult(device=", ".join(summary["fleet"]), supernet=fam.name, store=str(store),
                         measured=summary["measured"], skipped=summary["skipped"], failed=list(summary["failed"]),
                         wall_s=summary["wall_s"], subnets_per_min=summary["subnets_per_min"],
                         fp_hash=",".join(d["fp_hash"] for d in summary["devices"]), warnings=warnings,
                         retries=list(summary["retries"]), details=summary)


def profile_model(model: str | Path, device: Any = DEFAULT_DEVICE, *, store: str | Path | None = None,
                  time_cap_s: float | None = None,
                  input_shape: Sequence[int] | Mapping[str, Sequence[int]] | None = None) -> ModelProfileResult:
    """Latency of any ONNX file (or OpenVINO IR ``.xml`` on an ``openvino`` device) on ``device`` (the
    isolated scale: the file alone, lower quartile of its 30-run window medians), recorded in ``store`` when given.  ``input_shape``
    fixes dynamic dimensions: one shape, or ``{input name: shape}`` for named inputs
    (``--input-shape NAME:1x3x224x224``).  The store is created
    only once the model has loaded and run, so a bad model leaves none behind."""
    from hwnas.devices import profile_onnx_file
    from hwnas.devices.modelfile import check_model_file

    check_model_file(model)  # a bad file is one line, before a device is touched
    res = profile_onnx_file(model, device, time_cap_s=time_cap_s, input_shape=input_shape, store=store)
    m = res["measurement"]
    return ModelProfileResult(model=str(res["model"]), device=res["device"], median_ms=float(m["median_ms"]),
                              measurement=m, details=res)


# ---------------------------------------------------------------------------------- predictors
def fit_predictor(store: str | Path = DEFAULT_STORE, *, target: str = "latency", device: Any = None,
                  supernet: Any = "mbv3_fmnist", kind: str | None = None, out: str | Path | None = None,
                  holdout: float = 0.2, seed: int = 0, max_train: int | None = None,
                  prior: str | Path | Any = None, **options: Any) -> FitResult:
    """Fit a latency (of ``device``) or accuracy predictor on the store's rows; report held-out RMSE,
    MAPE, within +-5%/+-10% and Kendall tau, and write the artifact to ``out`` (see ``fit_job``)."""
    from hwnas.predictors.jobs import fit_job

    r = fit_job(store, device, supernet, target=target, kind=kind, out=out, holdout=holdout, seed=seed,
                max_train=max_train, prior=prior, **options)
    return FitResult(kind=r["kind"], target=r["target"], supernet=r["supernet"], n_train=r["n_train"],
                     n_test=r["n_test"], metrics=dict(r.get("metrics") or {}), out=r.get("out"), details=r)


def predict(predictor: str | Path | Any, archs: Any, *, supernet: Any = None) -> Prediction:
    """Predictions of a predictor (an artifact path or a fitted predictor) for archs: one arch dict, a
    list of them, an arch JSON file, or a gene matrix."""
    from hwnas.predictors.artifacts import load_predictor
    from hwnas.supernet.family import parse_arch

    want = None if supernet is None else str(getattr(supernet, "name", supernet))
    pred = load_predictor(predictor, expect_supernet=want) if isinstance(predictor, (str, Path)) else predictor
    fam = pred.family
    if supernet is not None and str(getattr(supernet, "name", supernet)) != fam.name:
        raise PredictorError(f"the predictor is for supernet {fam.name}, not {getattr(supernet, 'name', supernet)}")
    if isinstance(archs, (str, Path)):
        archs = [parse_arch(str(archs))]
    elif isinstance(archs, Mapping):
        archs = [dict(archs)]
    if isinstance(archs, np.ndarray):
        V = fam.space.canonicalize(archs)
    else:
        V = fam.space.canonicalize(fam.space.encode_many(list(archs)))
    values = pred.predict(V)
    meta = getattr(pred, "meta_", None) or {}
    target = meta.get("target", "latency" if "latency" in pred.targets else pred.targets[0])
    ids = [fam.space.arch_id(a) for a in fam.space.decode_many(V)]
    return Prediction(target=target, unit="ms" if target == "latency" else "top-1", supernet=fam.name,
                      arch_ids=ids, values=[float(v) for v in values],
                      predictor=str(predictor) if isinstance(predictor, (str, Path)) else pred.kind,
                      device=meta.get("device"))


# ---------------------------------------------------------------------------------- 2. search
def shipped_predictor_path(supernet: str, name: str) -> Path | None:
    """A predictor artifact shipped for ``supernet`` (e.g. ``accuracy.json``), if any."""
    from hwnas.resources import shipped_predictors_dir

    p = Path(shipped_predictors_dir(supernet)) / name
    return p if p.is_file() else None


def choose_budget(latencies_ms: np.ndarray, fraction: float = 0.35) -> float:
    """A budget inside the achievable range: ``fraction`` of the way from the fastest to the slowest."""
    lo, hi = float(np.min(latencies_ms)), float(np.max(latencies_ms))
    return round(lo + fraction * (hi - lo), 3)


def _describe_predictor(pred: Any, source: str, fit: Mapping[str, Any] | None = None) -> dict:
    meta = getattr(pred, "meta_", None) or {}
    d = {"kind": pred.kind, "source": source, "n_train": (fit or {}).get("n_train", meta.get("n_train"))}
    metrics = (fit or {}).get("metrics") or meta.get("metrics") or {}
    d["metrics"] = metrics
    if fit is not None:
        d["n_test"] = fit.get("n_test")
    return d


def _accuracy_predictor_on_data(net: Any, data: Any, store: str | Path, samples: int, seed: int, out: Path,
                                say: Log) -> tuple[Any, dict]:
    """Evaluate ``samples`` archs (smallest, largest and random ones) on ``data`` into ``store`` (those
    already there are reused) and fit an accuracy predictor on them (kind chosen by cross-validation)."""
    from hwnas.devices import Store
    from hwnas.predictors.artifacts import load_predictor
    from hwnas.predictors.jobs import fit_job
    from hwnas.supernet.accuracy import sample_archs
    from hwnas.supernet.evaluate import evaluate_arch

    archs = sample_archs(net.space, max(0, samples - 2), seed)
    t0 = time.perf_counter()
    with Store(store) as st:
        done = {r["arch_id"] for r in st.accuracies(net.weights_hash, data.split)}
        todo = [a for a in archs if net.space.arch_id(a) not in done]
        if todo:
            say(f"      evaluating {len(todo)} archs on {data.split} for the accuracy predictor "
                f"({len(archs) - len(todo)} already in {store})")
        for i, a in enumerate(todo):
            acc = evaluate_arch(net, a, data)
            st.add_accuracy(net.weights_hash, net.space.arch_id(a), data.split, acc, len(data.labels),
                            arch=net.space.canonical(a), supernet=net.family.name)
            if (i + 1) % 10 == 0 or i + 1 == len(todo):
                say(f"      {i + 1}/{len(todo)} evaluated ({time.perf_counter() - t0:.0f} s)")
    fit = fit_job(store, None, net.family.name, target="accuracy", kind="auto", out=out, holdout=0.2, seed=seed,
                  supernet_hash=net.weights_hash, split=data.split)
    m = fit.get("metrics") or {}
    say(f"      accuracy predictor ({fit['kind']}, {fit['n_train']} train / {fit['n_test']} held out): Kendall tau "
        f"{m.get('kendall_tau', float('nan')):.3f}, RMSE {100 * m.get('rmse', float('nan')):.2f} points")
    return load_predictor(fit["out"]), fit


# the search's size per round, on the predictors: NSGA-II for SEARCH_TIME_S seconds, then the budget
# refinement for REFINE_TIME_S (the shipped predictors run at about 100k-300k archs/s on 2 cores)
SEARCH_POP_SIZE = 128
SEARCH_TIME_S = 2.0
REFINE_TIME_S = 1.0


def search(device: Any = DEFAULT_DEVICE, latency: str | float | None = None, *, supernet: Any = "mbv3_fmnist",
           store: str | Path = DEFAULT_STORE, out: str | Path = "hwnas-out/search", rounds: int = 2, seed: int = 0,
           weights: str | Path | None = None, latency_predictor: str | Path | Any = None,
           accuracy_predictor: str | Path | Any = None, evaluate: bool | None = None, data: Any = None,
           accuracy_samples: int = 50, predictors_dir: str | Path | None = None,
           log: Log | None = None) -> SearchJobResult:
    """Closed-loop NSGA-II search for the most accurate subnet within ``latency`` (e.g. ``"0.25ms"``;
    default: 35% into the measured range) on ``device``, verified by measuring on the device.

    Latency predictor: ``latency_predictor`` (an artifact: a shipped or transferred one), corrected each
    round on the device's measurements in ``store`` (a few-shot ``transfer`` fit with it as the prior);
    else xgb fitted on the store's rows of the device (profile it first).  Accuracy predictor:
    ``accuracy_predictor``, else the one shipped with the weights, else (with ``data``) one fitted on
    ``accuracy_samples`` archs evaluated on the data (stored in ``store``, resumable).  ``data``: the
    user's dataset (``hwnas.data.images.open_dataset``) for BN recalibration and accuracy.  ``evaluate``
    (default: when there is data, given or shipped, and the weights are trained) evaluates the most
    promising within-budget archs for real.  Writes the front, the measured points, ``best.json`` and a
    Pareto plot to ``out``, all or nothing, and nothing at all when the request is refused.
    """
    from hwnas.devices import Store
    from hwnas.devices.profile import as_spec
    from hwnas.predictors.artifacts import load_predictor
    from hwnas.predictors.jobs import fit_job, load_latency_data
    from hwnas.archsearch.loop import closed_loop_search
    from hwnas.archsearch.measure import device_confirm, device_measure
    from hwnas.devices.backends import get_backend_class
    from hwnas.devices.backends.base import LocalBackend
    from hwnas.archsearch.output import format_table, write_outputs
    from hwnas.archsearch.units import parse_latency

    say = log or _quiet
    spec = as_spec(device)
    net = create_supernet(supernet, weights=weights)
    fam = net.family
    budget_ms = parse_latency(latency) if latency is not None else None
    # ---- data and predictors, all checked before anything is written
    eval_data = None
    if data is not None:
        from hwnas.supernet.accuracy import open_eval_data

        if net.weights_hash == "init":
            raise DataError(f"--data evaluates accuracy, and supernet {fam.name} has no trained weights here: pass "
                            f"--weights PATH (its checkpoint)")
        eval_data = open_eval_data(fam, data)  # layout, channels and classes checked here, before any work
        say(f"      data: {eval_data.describe() if hasattr(eval_data, 'describe') else eval_data.split}")
    acc_from_data = False
    if accuracy_predictor is None:
        accuracy_predictor = shipped_predictor_path(fam.name, "accuracy.json")
        if eval_data is not None and (accuracy_predictor is None or eval_data.split != "val"):
            acc_from_data = True  # fitted below, on archs evaluated on the user's data
        elif accuracy_predictor is None:
            raise PredictorError(f"supernet {fam.name} ships no accuracy predictor: pass one (--accuracy-predictor "
                                 f"FILE: an hwnas artifact or Once-for-All's .pth), or your data (--data DIR) to "
                                 f"fit one on")
    acc_pred = None
    if not acc_from_data:
        acc_pred = (load_predictor(accuracy_predictor, expect_supernet=fam.name, expect_target="accuracy")
                    if isinstance(accuracy_predictor, (str, Path)) else accuracy_predictor)
        acc_meta = getattr(acc_pred, "meta_", None) or {}
        if acc_meta.get("supernet_hash") and net.weights_hash != "init" and acc_meta["supernet_hash"] != net.weights_hash:
            raise PredictorError(f"the accuracy predictor was fitted on supernet weights {acc_meta['supernet_hash']}, not "
                                 f"on these ({net.weights_hash}); pass a predictor of these weights")
    if int(accuracy_samples) < 5 and acc_from_data:
        raise PredictorError(f"accuracy_samples must be at least 5 to fit an accuracy predictor; got {accuracy_samples}")
    have_rows = Path(store).is_file()
    lats = None
    if have_rows:
        try:
            lats = np.asarray(load_latency_data(store, spec, fam.name)["y"], dtype=float)
        except PredictorError:
            lats = None
    if latency_predictor is None and lats is None:
        raise SearchError(f"no {fam.name} measurements of {spec.name} in {store}; profile the device first "
                          f"(hwnas profile --device {spec.name} --store {store}) or pass --latency-predictor FILE")
    with job_tempdir("hwnas-search-") as tmpdir:
        acc_fit = None
        if acc_from_data:
            acc_pred, acc_fit = _accuracy_predictor_on_data(net, eval_data, store, int(accuracy_samples), seed,
                                                           tmpdir / "accuracy.json", say)
            accuracy_predictor = f"fitted on {acc_fit['n_rows']} archs evaluated on {eval_data.split}"
        lat_fit = None
        if latency_predictor is None:
            lat_fit = fit_job(store, spec, fam.name, target="latency", kind="xgb", out=tmpdir / "latency.json",
                              holdout=0.2, seed=seed)
            lat_pred = load_predictor(lat_fit["out"])
            lat_info = _describe_predictor(lat_pred, "fitted on the store's measurements (xgb)", lat_fit)
            m = lat_fit["metrics"]
            say(f"      latency predictor (xgb, {lat_fit['n_train']} train / {lat_fit['n_test']} held out): "
                f"{100 * m['within_10']:.0f}% within +-10%, MAPE {m['mape']:.1f}%, Kendall tau {m['kendall_tau']:.3f}")
        else:
            lat_pred = (load_predictor(latency_predictor, expect_supernet=fam.name, expect_target="latency")
                        if isinstance(latency_predictor, (str, Path)) else latency_predictor)
            meta = getattr(lat_pred, "meta_", None) or {}
            if meta.get("device") and meta["device"] != spec.name:
                say(f"      note: the latency predictor was fitted for device {meta['device']}, searching on {spec.name}")
            lat_info = _describe_predictor(lat_pred, str(latency_predictor) if isinstance(latency_predictor, (str, Path))
                                           else "given")
            say(f"      latency predictor: {lat_info['source']} ({lat_pred.kind})")
        if budget_ms is None:
            if lats is not None:
                budget_ms = choose_budget(lats)
                range_note = f"measured range {lats.min():.3f}-{lats.max():.3f} ms"
            else:
                sp = fam.space
                ends = lat_pred.predict([sp.min_arch(), sp.max_arch()])
                budget_ms = choose_budget(ends)
                range_note = f"predicted range {ends.min():.3f}-{ends.max():.3f} ms"
        else:
            range_note = (f"measured range {lats.min():.3f}-{lats.max():.3f} ms" if lats is not None
                          else "no measurements yet")
        say(f"      searching for the most accurate subnet within {budget_ms:.3f} ms on {spec.name} "
            f"({range_note}), {rounds} rounds")
        evaluate_fn = None
        if evaluate is None:
            evaluate = (eval_data is not None or fam.dataset == "fashion-mnist") and net.weights_hash != "init"
        if evaluate:
            from hwnas.supernet.accuracy import open_eval_data
            from hwnas.supernet.evaluate import evaluate_arch

            ev = eval_data if eval_data is not None else open_eval_data(fam)
            evaluate_fn = lambda archs: [evaluate_arch(net, a, ev) for a in archs]  # noqa: E731
        with Store(store) as st:
            measure = device_measure(st, spec, supernet_model_builder(net, spec.backend, tmpdir / "models",
                                                                      batch=spec.batch),
                                     fam.name, net.space, anchor=anchor_of(fam),
                                     warn=lambda w: say(f"      warning: {w}"))
            confirm = None
            if issubclass(get_backend_class(spec.backend), LocalBackend):  # a fresh session, against the calibration
                confirm = device_confirm(st, spec, supernet_model_builder(net, spec.backend, tmpdir / "confirm",
                                                                          batch=spec.batch), anchor_of(fam))
            prior = lat_pred

            def refit(rows: Sequence[Mapping[str, Any]]):
                if latency_predictor is None:
                    fit = fit_job(store, spec, fam.name, target="latency", kind="xgb", out=tmpdir / "lat.json",
                                  holdout=0.0, seed=seed)
                else:  # the given predictor, corrected on what the device measured so far
                    if len(rows) < 5:  # a transfer fit needs a few measurements
                        return prior.predict
                    fit = fit_job(store, spec, fam.name, target="latency", kind="transfer", prior=prior,
                                  out=tmpdir / "lat.json", holdout=0.0, seed=seed)
                return load_predictor(fit["out"]).predict

            result = closed_loop_search(
                net.space, acc_pred.predict, lat_pred.predict, refit, measure, budget_ms, rounds=rounds, seed=seed,
                pop_size=SEARCH_POP_SIZE, time_s=SEARCH_TIME_S, refine_time_s=REFINE_TIME_S,
                evaluate_accuracy=evaluate_fn, confirm=confirm, supernet=fam.name, device=spec.name)
        fitted = (tmpdir / "latency.json").read_bytes() if lat_fit is not None else None
    files = write_outputs(result, Path(out))
    if predictors_dir is not None and fitted is not None:  # keep the latency predictor fitted for this search
        from hwnas.io import atomic_write_bytes

        p = atomic_write_bytes(Path(predictors_dir) / "latency.json", fitted)
        files["latency_predictor"] = str(p)
    say(format_table(result))
    b = result.best
    return SearchJobResult(
        best_arch=b.arch, best_arch_id=b.arch_id, measured_latency_ms=b.measured_latency_ms,
        predicted_latency_ms=b.predicted_latency_ms, accuracy=b.accuracy,
        accuracy_evaluated=b.evaluated_accuracy is not None,
        budget_ms=float(budget_ms), device=spec.name, supernet=fam.name, files=files,
        latency_predictor=lat_info, accuracy_predictor=_describe_predictor(acc_pred, str(accuracy_predictor), acc_fit),
        n_predicted=int(result.predictor_evals), wall_s=float(result.wall_s),
        confirmed_latency_ms=b.confirmed_latency_ms, confirmed_ci95_ms=b.confirmed_ci_ms,
        confirmed_within_budget=result.confirmed_within_budget, result=result)


# ---------------------------------------------------------------------------------- 3. export
def export(arch: Any, out: str | Path, *, supernet: Any = "mbv3_fmnist", weights: str | Path | None = None,
           format: str = "onnx", batch: int = 1, device: Any = None, data: str | Path | None = None,
           calibration: str | Path | None = None,
           dynamic_batch: bool = False, optimize: bool = True, tolerance: float = 1e-4, time_cap_s: float | None = None,
           command: str | None = None, progress: Callable[[str], None] | None = None,
           **options: Any) -> ExportResult:
    """Export ``arch`` (a dict, an arch JSON file or inline JSON) of ``supernet`` as a verified engine in
    ``format`` (see ``hwnas.formats.list_formats()``) to ``out``, with a manifest ``out.json`` beside it;
    with ``device`` the engine's latency there is measured and recorded.  ``data``: the user's dataset
    (``hwnas.data.images.open_dataset``) for BN recalibration, INT8 calibration and the accuracy checks;
    ``calibration`` is its older name, and ``"none"`` keeps the supernet's BN statistics."""
    from hwnas.formats import export_subnet
    from hwnas.errors import ExportError

    if data is not None and calibration is not None and str(data) != str(calibration):
        raise ExportError("pass the images once: data= and calibration= name the same thing")
    calibration = data if data is not None else calibration
    from hwnas.supernet.family import parse_arch

    a = parse_arch(arch) if isinstance(arch, (str, Path)) else dict(arch)
    m = export_subnet(a, out, supernet, str(weights) if weights else None, fmt=format, batch=batch,
                      dynamic_batch=dynamic_batch, optimize=optimize, tolerance=tolerance, command=command,
                      device=device, calibration=calibration, time_cap_s=time_cap_s, progress=progress, **options)
    return ExportResult(path=m["path"], manifest_path=m["manifest"], format=m["format"], precision=m["precision"],
                        arch_id=m["arch_id"], manifest=m)


def measure_file_anchored(path: str | Path, device: Any, supernet: Any, store: str | Path, *,
                          seconds: float = 1.0) -> dict:
    """An exported ONNX file of ``supernet`` timed on ``device`` on the store's anchored scale (new
    sessions; the family's anchor built as the profiles built it; ``seconds`` of timed block pairs).
    Returns the measurement as a dict, with ``scale`` and ``how``."""
    import tempfile

    from hwnas.devices import Store
    from hwnas.devices.backends import create_backend
    from hwnas.devices.calibration import MIN_CALIBRATION_S, AnchorCalibration
    from hwnas.devices.profile import as_spec, measure_anchored
    from hwnas.devices.protocol import SCALES, ProtocolSettings

    spec = as_spec(device)
    net = create_supernet(supernet)
    s = ProtocolSettings.from_mapping(spec.protocol)
    s = s.replace(min_timed_s=max(s.min_timed_s, seconds), time_cap_s=max(s.time_cap_s, 2 * seconds))
    aid, aarch = anchor_of(net.family)
    with tempfile.TemporaryDirectory(prefix="hwnas-anchor-") as tmp, Store(store) as st:
        amodel, ashape = supernet_model_builder(net, spec.backend, tmp, batch=spec.batch)(aarch)
        m = measure_anchored(st, spec, str(path), (aid, amodel), anchor_shape=ashape, settings=s)
        # the anchor alone now: how far the host's speed has moved since the calibration (a plain loop
        # timed now sees the latency at this speed)
        with create_backend(spec, model=amodel, input_shape=ashape) as a:
            cal = AnchorCalibration(a, s.seed)
            cal.burst(MIN_CALIBRATION_S)
            anchor_now = cal.estimate()
    now = m.anchor_ratio * anchor_now if m.anchor_ratio is not None else None
    return {**m.to_dict(), "how": SCALES[m.scale], "file": str(path), "device": spec.name,
            "anchor_now_ms": anchor_now, "at_current_speed_ms": now}


# ---------------------------------------------------------------------------------- the main job
def _cpu_reference(device: Any, say: Log) -> Any:
    """The ONNX Runtime CPU device the engines are compared on: ``device`` itself when it is one, else
    ``ort-cpu-1t`` here (said in the log): engine selection times candidates in this process."""
    from hwnas.devices import DeviceSpec, load_device

    spec = device if isinstance(device, DeviceSpec) else load_device(device)
    if spec.backend == "ort" and spec.options.get("provider", "CPUExecutionProvider") == "CPUExecutionProvider":
        return device
    say(f"      {spec.name} is not an ONNX Runtime CPU device: the engines are compared on ort-cpu-1t on this machine")
    return "ort-cpu-1t"


def _openvino_installed() -> bool:
    from hwnas.formats.best import openvino_available

    return openvino_available()


def run(out: str | Path = "hwnas-out", *, device: Any = DEFAULT_DEVICE, supernet: Any = "mbv3_fmnist",
        samples: int = 150, latency: str | float | None = None, rounds: int = 2, seed: int = 0,
        time_cap_s: float = 1.0, log: Log | None = None, progress: Callable[[Any], None] | None = None) -> RunResult:
    """The three jobs end to end: profile ``device`` (rows in ``OUT/store.sqlite``, reused on a second
    run), fit its latency predictor, search for a budget that suits it, export the chosen subnet as
    verified ONNX (FP32) and the engine chosen by measurement on ``device`` (``--format best``: ORT FP32,
    ORT INT8 variants and, where installed, OpenVINO FP32/INT8; the fastest that passes the accuracy gate)
    with their manifests, and write ``OUT/summary.json``."""
    from hwnas.io import atomic_write_json

    say = log or _quiet
    out = Path(out)
    store = out / "store.sqlite"
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    name = getattr(supernet, "name", supernet)
    say(f"[1/3] profiling {getattr(device, 'name', device)}: {samples} subnets of {name} (resumes from {store})")
    t = time.perf_counter()
    prof = profile(device, supernet, samples, store=store, seed=seed, time_cap_s=time_cap_s, progress=progress)
    timings["profile_s"] = time.perf_counter() - t
    say(f"      {prof.measured} measured, {prof.skipped} reused, {prof.subnets_per_min:.0f} subnets/min")

    say(f"[2/3] predictors and closed-loop NSGA-II search on {prof.device}")
    t = time.perf_counter()
    found = search(device, latency, supernet=supernet, store=store, out=out / "search", rounds=rounds, seed=seed,
                   predictors_dir=out / "predictors", log=say)
    timings["search_s"] = time.perf_counter() - t

    say(f"[3/3] exporting {found.best_arch_id}: verified ONNX (FP32), then the engine chosen by measurement "
        "(ORT FP32 / INT8" + (", OpenVINO" if _openvino_installed() else "") + ")")
    t = time.perf_counter()
    exp_dir = out / "export"
    eng = export(found.best_arch, exp_dir / "best.engine.onnx", supernet=supernet, format="best",
                 command="hwnas run", device=_cpu_reference(device, say), fp32_out=exp_dir / "best.onnx").manifest
    timings["export_s"] = time.perf_counter() - t
    shipped = None
    from hwnas.devices.backends import get_backend_class
    from hwnas.devices.backends.base import LocalBackend
    from hwnas.devices.profile import as_spec

    if issubclass(get_backend_class(as_spec(device).backend), LocalBackend):
        say(f"      timing the shipped {exp_dir / 'best.onnx'} on {prof.device}, anchored like the profile")
        shipped = measure_file_anchored(exp_dir / "best.onnx", device, supernet, store)
    timings["total_s"] = time.perf_counter() - t0
    r = found.result
    m = found.latency_predictor.get("metrics") or {}
    sel = eng["selection"]
    summary = {
        "device": prof.device,
        "supernet": prof.supernet,
        "budget_ms": found.budget_ms,
        "best": {"arch_id": found.best_arch_id, "measured_latency_ms": found.measured_latency_ms,
                 "predicted_latency_ms": found.predicted_latency_ms, "val_top1": found.accuracy,
                 "predicted_top1": r.best.predicted_accuracy,
                 "confirmed_latency_ms": r.best.confirmed_latency_ms,
                 "confirmed_ci95_ms": list(r.best.confirmed_ci_ms) if r.best.confirmed_ci_ms else None,
                 "confirmed_within_budget": r.confirmed_within_budget,
                 "shipped_onnx": ({"file": shipped["file"], "median_ms": shipped["median_ms"],
                                   "ci95_ms": [shipped["ci_low_ms"], shipped["ci_high_ms"]], "scale": shipped["scale"],
                                   "how": shipped["how"], "anchor_ms": shipped["anchor_ms"],
                                   "anchor_ratio": shipped["anchor_ratio"], "anchor_now_ms": shipped["anchor_now_ms"],
                                   "at_current_speed_ms": shipped["at_current_speed_ms"]} if shipped else None),
                 "scale": "anchored (see PROTOCOL.md): the profile's calibrated anchor x block ratio"},
        "latency_predictor": {"n_train": found.latency_predictor.get("n_train"),
                              "n_test": found.latency_predictor.get("n_test"), **m},
        # every candidate is timed paired with ORT FP32, side by side; in ms its speed-up is applied to the
        # chosen subnet's anchored latency, so it reads on the same scale as every other latency of this job
        "engine": {"winner": sel["winner"], "reason": sel["reason"], "int8_line": sel["int8_line"],
                   "path": eng["path"], "cpu_vnni": sel["cpu_vnni"], "gate": sel["gate"],
                   "profile_with": sel["profile_with"],
                   "candidates": [{"name": c["name"], "runtime": c["runtime"], "precision": c["precision"],
                                   "speedup_vs_ort_fp32": c.get("speedup_vs_ort_fp32"),
                                   "latency_ms": (found.measured_latency_ms / c["speedup_vs_ort_fp32"]
                                                  if c.get("speedup_vs_ort_fp32") else None),
                                   "side_by_side_raw_ms": c.get("latency_ms"), "top1": c["top1"],
                                   "agreement_with_fp32": c["agreement_with_fp32"], "gate": c["gate"],
                                   "size_bytes": c["size_bytes"]} for c in sel["candidates"]]},
        "files": {"store": str(store), **found.files, "onnx": str(exp_dir / "best.onnx"),
                  "onnx_manifest": str(exp_dir / "best.onnx.json"),
                  "engine": eng["path"], "engine_manifest": eng["manifest"]},
        "profile": {k: prof.details[k] for k in ("measured", "skipped", "subnets_per_min", "overhead")},
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    atomic_write_json(out / "summary.json", summary, indent=2, default=str)
    return RunResult(summary=summary)


__all__ = ["ExportResult", "FitResult", "ModelProfileResult", "Prediction", "ProfileResult", "RunResult",
           "SearchJobResult", "choose_budget", "create_supernet", "export", "fit_predictor", "predict", "profile",
           "profile_model", "run", "search", "supernet_model_builder"]
