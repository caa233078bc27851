"""Once-for-All's AccuracyPredictor files as ``ofa_mlp`` predictors: the same numbers as OFA's own
``predict_acc`` (when OFA's package is installed), the JSON artifact round trip, ``.pth`` through
``load_predictor`` and ``hwnas search``, and one clear line for every bad file.

The comparisons build OFA's ``AccuracyPredictor`` from a fixed torch seed with the helpers of
``bench/ofa_accuracy_compat.py`` (the full table and throughput: ``python bench/ofa_accuracy_compat.py``).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hwnas.errors import PredictorError
from hwnas.predictors import get_predictor_class, load_predictor, save_predictor
from hwnas.supernet.registry import get_family

# hwnas.predictors.ofa_mlp is imported inside the tests (it is a built-in kind, registered with the others)


def load_ofa_accuracy_predictor(*args, **kw):
    from hwnas.predictors.ofa_mlp import load_ofa_accuracy_predictor as load

    return load(*args, **kw)


def ofa_mlp_class():
    from hwnas.predictors.ofa_mlp import OFAAccuracyMLP

    return OFAAccuracyMLP

_BENCH = Path(__file__).resolve().parents[2] / "bench" / "ofa_accuracy_compat.py"
W10, W12 = "ofa_mbv3_w1.0", "ofa_mbv3_w1.2"


@pytest.fixture(scope="module")
def bench():
    pytest.importorskip("ofa", reason="OFA's package is not installed (pip install --no-deps "
                                      "ofa==0.1.0.post202307202001)")
    spec = importlib.util.spec_from_file_location("hwnas_bench_ofa_accuracy_compat", _BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.ofa_accuracy_classes()
    return mod


def archs_of(family: str, n: int, seed: int = 0) -> list[dict]:
    sp = get_family(family).space
    rng = np.random.default_rng(seed)
    return [sp.min_arch(), sp.max_arch()] + [sp.sample(rng) for _ in range(n - 2)]


def fake_state_dict(n_in: int, hidden: int = 32, n_layers: int = 3, seed: int = 0, base: float = 0.7) -> dict:
    """The key layout of OFA's AccuracyPredictor (without OFA), small hidden layers."""
    g = torch.Generator().manual_seed(seed)
    sd, prev = {}, n_in
    for i in range(n_layers):
        sd[f"layers.{i}.0.weight"] = torch.randn(hidden, prev, generator=g) / prev ** 0.5
        sd[f"layers.{i}.0.bias"] = 0.1 * torch.randn(hidden, generator=g)
        prev = hidden
    sd[f"layers.{n_layers}.weight"] = 0.1 * torch.randn(1, hidden, generator=g)
    sd["base_acc"] = torch.tensor([base])
    return sd


@pytest.fixture(scope="module")
def pth(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("ofa_acc") / "acc_predictor.pth"
    torch.save(fake_state_dict(145), p)  # 25 image sizes + 20 slots x (3 + 3): ofa_mbv3_w1.0
    return p


# ---------------------------------------------------------------------------------- against OFA's code
@pytest.mark.parametrize("family", [W10, W12])
@pytest.mark.parametrize("wrap", ["bare", "state_dict"])
def test_matches_ofa_predict_acc(bench, tmp_path, family, wrap):
    net = bench.build_ofa_predictor(family, seed=3)
    assert float(net.base_acc) != 0.0
    sd = net.state_dict()
    path = tmp_path / "acc_predictor.pth"
    torch.save(sd if wrap == "bare" else {"state_dict": sd, "epoch": 10}, path)
    pred = load_predictor(path, expect_supernet=family, expect_target="accuracy")
    assert isinstance(pred, ofa_mlp_class()) and pred.encoding == "arch_encoder"
    archs = archs_of(family, 60)
    want = bench.ofa_predict(net, archs)
    got = pred.predict(archs)
    assert np.max(np.abs(got - want)) < 1e-5
    assert np.ptp(want) > 1e-3  # the archs do not all predict the same: the encoding is exercised
    # OFA's own spelling of the resolution (image_size) is accepted too, and gene matrices give the same
    np.testing.assert_array_equal(pred.predict([bench.to_ofa(a) for a in archs]), got)
    sp = get_family(family).space
    np.testing.assert_array_equal(pred.predict(sp.canonicalize(sp.encode_many(archs))), got)


def test_matches_ofa_tutorial_predictor(bench, tmp_path):
    t = bench.build_ofa_tutorial_predictor(seed=1)
    path = tmp_path / "tutorial.pth"
    torch.save(t.model.state_dict(), path)
    pred = load_predictor(path, expect_supernet=W10)
    assert pred.encoding == "tutorial"
    archs = archs_of(W10, 40)
    want = bench.ofa_tutorial_predict(t, archs)
    assert np.max(np.abs(pred.predict(archs) - want)) < 1e-5


def test_image_sizes_for_an_encoder_wider_than_the_space(bench, tmp_path):
    """A predictor whose encoder lists 128-224 used on ofa_mbv3_w1.2 (160-224): refused by default with a
    hint, right with ``image_sizes``."""
    net = bench.build_ofa_predictor(W10, seed=5)
    path = tmp_path / "w10.pth"
    torch.save(net.state_dict(), path)
    with pytest.raises(PredictorError, match="image_sizes"):
        load_ofa_accuracy_predictor(path, W12)
    pred = load_ofa_accuracy_predictor(path, W12, image_sizes=range(128, 225, 4))
    archs = archs_of(W12, 30)
    assert np.max(np.abs(pred.predict(archs) - bench.ofa_predict(net, archs))) < 1e-5
    out = save_predictor(pred, tmp_path / "w12.json", {"target": "accuracy"})
    np.testing.assert_array_equal(load_predictor(out).predict(archs), pred.predict(archs))


# ---------------------------------------------------------------------------------- without OFA's code
def test_json_artifact_round_trip_is_identical(pth, tmp_path):
    pred = load_predictor(pth, expect_supernet=W10, expect_target="accuracy")
    assert pred.meta_["target"] == "accuracy" and "Once-for-All" in pred.meta_["notes"]
    out = save_predictor(pred, tmp_path / "acc.json", {"target": "accuracy", "notes": pred.meta_["notes"]})
    back = load_predictor(out, expect_supernet=W10, expect_target="accuracy")
    assert type(back) is ofa_mlp_class() and back.kind == "ofa_mlp"
    archs = archs_of(W10, 200, seed=1)
    np.testing.assert_array_equal(back.predict(archs), pred.predict(archs))
    with pytest.raises(PredictorError, match="not latency"):
        load_predictor(out, expect_target="latency")
    with pytest.raises(PredictorError, match=W12):
        load_predictor(out, expect_supernet=W12)


def test_forward_is_batched_and_matches_a_plain_one_hot_forward(pth, monkeypatch):
    pred = load_ofa_accuracy_predictor(pth, W10)
    sp = get_family(W10).space
    archs = archs_of(W10, 50, seed=2)
    got = pred.predict(archs)
    # the reference: OFA's MobileNetArchEncoder feature written out slot by slot, then the MLP
    sizes = list(sp.resolutions)
    ref = []
    for a in archs:
        f = np.zeros(145)
        f[sizes.index(a["r"])] = 1
        for i in range(20):
            if i % 4 < a["d"][i // 4]:
                f[25 + 3 * i + sp.ks_list.index(a["ks"][i])] = 1
                f[25 + 60 + 3 * i + sp.e_list.index(a["e"][i])] = 1
        h = f
        for j, (w, b) in enumerate(zip(pred.weights_, pred.biases_)):
            h = h @ w.astype(np.float64) + b
            h = np.maximum(h, 0) if j < len(pred.weights_) - 1 else h
        ref.append(h[0] + pred.base_acc_)
    assert np.max(np.abs(got - np.array(ref))) < 1e-12
    monkeypatch.setattr(ofa_mlp_class(), "CHUNK", 7)  # chunked forward: the same numbers, up to BLAS's
    np.testing.assert_allclose(pred.predict(archs), got, rtol=0, atol=1e-14)  # batch-size-dependent rounding


def test_cannot_be_fitted(pth):
    cls = ofa_mlp_class()
    assert get_predictor_class("ofa_mlp") is cls and cls.targets == ("accuracy",)
    with pytest.raises(PredictorError, match="cannot be fitted.*'mlp' or 'xgb'"):
        cls(supernet=W10).fit([archs_of(W10, 3)[0]], [0.7])
    with pytest.raises(PredictorError, match="cannot be fitted"):
        load_ofa_accuracy_predictor(pth, W10).fit(archs_of(W10, 5), np.full(5, 0.7))


def test_load_predictor_needs_the_supernet_and_accuracy(pth):
    with pytest.raises(PredictorError, match="does not record its supernet") as e:
        load_predictor(pth)
    assert "\n" not in str(e.value)
    with pytest.raises(PredictorError, match="predicts accuracy, not latency"):
        load_predictor(pth, expect_supernet=W10, expect_target="latency")
    with pytest.raises(PredictorError, match="no supernet weights hash"):
        load_predictor(pth, expect_supernet=W10, expect_supernet_hash="abc")


def test_families_it_does_not_apply_to(pth):
    with pytest.raises(PredictorError, match="no OFA MobileNetV3 search space") as e:
        load_ofa_accuracy_predictor(pth, "ofa_resnet50")
    assert "\n" not in str(e.value)
    with pytest.raises(PredictorError, match="takes 145 inputs.*mbv3_fmnist.*gives 75"):
        load_ofa_accuracy_predictor(pth, "mbv3_fmnist")


def _bad_files(d: Path) -> dict[str, tuple[Path, str]]:
    good = fake_state_dict(145)
    raw_path = d / "good.pth"
    torch.save(good, raw_path)
    raw = raw_path.read_bytes()
    out: dict[str, tuple[Path, str]] = {}

    def put(name: str, obj=None, data: bytes | None = None, match: str = "") -> None:
        p = d / f"{name}.pth"
        if data is not None:
            p.write_bytes(data)
        elif obj is not None:
            torch.save(obj, p)
        out[name] = (p, match)

    put("missing", match="does not exist")
    put("not_torch", data=b"arch,accuracy\n", match="is not a PyTorch file")
    put("truncated", data=raw[: len(raw) // 2], match="damaged, truncated")
    put("wrong_keys", {"fc.weight": torch.zeros(1, 3)}, match="holds tensors fc.weight, not an OFA AccuracyPredictor")
    put("extra_key", {**good, "layers.9.weight": torch.zeros(1, 1)}, match="not an OFA AccuracyPredictor")
    put("other_space", fake_state_dict(137), match="takes 137 inputs.*gives 145.*ofa_mbv3_w1.2")
    put("hidden_shape", {**good, "layers.1.0.weight": torch.zeros(32, 31)}, match=r"layers\.1\.0\.weight has shape")
    put("bias_shape", {**good, "layers.2.0.bias": torch.zeros(5)}, match=r"layers\.2\.0\.bias has shape")
    put("two_outputs", {**good, "layers.3.weight": torch.zeros(2, 32)}, match=r"layers\.3\.weight has shape")
    put("nan", {**good, "base_acc": torch.tensor([float("nan")])}, match="NaN")
    put("not_a_dict", [torch.zeros(3)], match="does not hold a state dict")
    put("not_tensors", {"state_dict": {"a": 1}}, match="does not hold a state dict")
    put("whole_module", torch.nn.Linear(3, 1), match="pickled Python objects")
    return out


BAD = ["missing", "not_torch", "truncated", "wrong_keys", "extra_key", "other_space", "hidden_shape", "bias_shape",
       "two_outputs", "nan", "not_a_dict", "not_tensors", "whole_module"]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    return _bad_files(tmp_path_factory.mktemp("bad_ofa"))


@pytest.mark.parametrize("name", BAD)
def test_bad_file_is_one_line(bad_files, name):
    path, match = bad_files[name]
    with pytest.raises(PredictorError, match=match) as e:
        load_predictor(path, expect_supernet=W10, expect_target="accuracy")
    msg = str(e.value)
    assert "\n" not in msg and path.name in msg and len(msg) < 600


def test_module_prefix_and_legacy_serialization(pth, tmp_path):
    sd = torch.load(pth, weights_only=True)
    p = tmp_path / "legacy.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, p, _use_new_zipfile_serialization=False)
    archs = archs_of(W10, 20)
    np.testing.assert_array_equal(load_predictor(p, expect_supernet=W10).predict(archs),
                                  load_predictor(pth, expect_supernet=W10).predict(archs))


# ---------------------------------------------------------------------------------- the CLI
def hwnas(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "hwnas", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_search_takes_an_ofa_pth(pth, bad_files, tmp_path):
    """``hwnas search --accuracy-predictor FILE.pth`` loads it for the supernet and gets as far as the
    latency predictor (no measurements in an empty store); a bad file stops it first, in one line."""
    out = tmp_path / "search"
    r = hwnas("search", "--supernet", W10, "--accuracy-predictor", pth, "--store", tmp_path / "s.sqlite", "-o", out)
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("hwnas: error: no ofa_mbv3_w1.0 measurements") and "Traceback" not in r.stderr
    r = hwnas("search", "--supernet", W10, "--accuracy-predictor", bad_files["other_space"][0], "--store",
              tmp_path / "s.sqlite", "-o", out)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "takes 137 inputs" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()
