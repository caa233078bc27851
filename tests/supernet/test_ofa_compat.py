"""Once-for-All's own OFAMobileNetV3 state dicts load into ``ofa_mbv3_w1.0`` / ``ofa_mbv3_w1.2`` with
no key left over, and ``extract(arch)`` computes what OFA's ``get_active_subnet`` computes.

Needs OFA's package beside hwnas: ``pip install --no-deps ofa==0.1.0.post202307202001`` (nothing
else: where torchvision is missing or cannot load, the helpers in ``bench/ofa_compat.py`` import
OFA's network code without OFA's torchvision-based data loader).  Skipped when ``ofa`` is absent.
The full check, more archs and a table: ``python bench/ofa_compat.py``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

pytest.importorskip(
    "ofa",
    reason="OFA's package is not installed (pip install --no-deps ofa==0.1.0.post202307202001)",
)

from hwnas.errors import CheckpointError  # noqa: E402
from hwnas.supernet.registry import create_supernet  # noqa: E402

_BENCH = Path(__file__).resolve().parents[2] / "bench" / "ofa_compat.py"


def _bench():
    spec = importlib.util.spec_from_file_location("hwnas_bench_ofa_compat", _BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


oc = _bench()


@pytest.fixture(scope="module")
def ofa_nets(tmp_path_factory):
    """Per width: OFA's supernet with every weight, BN statistic and kernel matrix perturbed, and
    its state dict saved in each spelling we promise to read."""
    OFAMobileNetV3, _how = oc.import_ofa_mbv3()
    d = tmp_path_factory.mktemp("ofa_ckpt")
    out = {}
    for w in (1.0, 1.2):
        torch.manual_seed(0)
        net = OFAMobileNetV3(width_mult=w, **oc.OFA_KW)
        oc.randomize_(net, int(w * 10))
        net.eval()
        sd = {k: v.detach().clone() for k, v in net.state_dict().items()}
        paths = {}
        for i, (label, obj) in enumerate(oc.spellings(sd).items()):
            paths[label] = d / f"w{w}_{i}.pth"
            torch.save(obj, paths[label])
        out[w] = (net, sd, paths)
    return out


@pytest.mark.parametrize("w", [1.0, 1.2])
def test_ofa_state_dict_loads_with_no_key_left_over(ofa_nets, w):
    _, sd, paths = ofa_nets[w]
    family = f"ofa_mbv3_w{w}"
    for label, path in paths.items():
        missing, unexpected = oc.key_report(path, family)
        assert (missing, unexpected) == ([], []), label
        ours = create_supernet(family, weights=path).state_dict()
        for k, v in sd.items():
            if label.startswith("legacy") and k.endswith("num_batches_tracked"):
                continue
            assert torch.equal(ours[k], v), (label, k)


@pytest.mark.parametrize("w", [1.0, 1.2])
def test_extract_matches_ofa_get_active_subnet(ofa_nets, w):
    ofa_net, _, paths = ofa_nets[w]
    ours = create_supernet(f"ofa_mbv3_w{w}", weights=paths["mobile_inverted_conv"])
    sp = ours.space
    mixed = sp.sample(3)
    mixed["ks"] = [5] * sp.n_blocks  # min arch runs 7->5->3, max none, this one 7->5 only
    for i, arch in enumerate([sp.min_arch(), sp.max_arch(), mixed]):
        r = oc.compare(ofa_net, ours, arch, seed=i)
        assert r["n_blocks"] == r["n_blocks_ofa"]
        tol = 1e-5 * max(1.0, r["scale"])
        assert r["sub"] < tol and r["super"] < tol and r["sub_vs_ofa_super"] < tol, (sp.arch_id(arch), r)


def test_wrong_width_checkpoint_names_the_right_family(ofa_nets):
    with pytest.raises(CheckpointError, match=r"matches family 'ofa_mbv3_w1\.0'"):
        create_supernet("ofa_mbv3_w1.2", weights=ofa_nets[1.0][2]["bare"])
    with pytest.raises(CheckpointError, match=r"matches family 'ofa_mbv3_w1\.2'"):
        create_supernet("ofa_mbv3_w1.0", weights=ofa_nets[1.2][2]["state_dict"])
