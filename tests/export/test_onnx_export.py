import numpy as np
import onnx
import pytest
import torch

from hwnas.errors import ModelFileError
from hwnas.formats.onnx_export import check_onnx, export_onnx, load_session
from hwnas.supernet.registry import create_supernet
from export_support import randomize


@pytest.fixture(scope="module")
def fmnist():
    return randomize(create_supernet("mbv3_fmnist", pretrained=False))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fmnist_subnet_onnx_matches_pytorch(tmp_path, fmnist, seed):
    arch = fmnist.space.sample(seed)
    sub = fmnist.extract(arch, calibration=None).eval()
    path = export_onnx(sub, tmp_path / "m.onnx", sub.input_shape, batch=1)
    model = onnx.load(str(path))
    assert model.opset_import[0].version >= 17
    assert [i.name for i in model.graph.input] == ["input"] and model.graph.output[0].name == "logits"
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 1, arch["r"], arch["r"]]
    x = torch.randn(8, *sub.input_shape, generator=torch.Generator().manual_seed(seed))
    chk = check_onnx(path, sub, x)
    assert chk.passed and chk.max_abs_err < 1e-4 and chk.n_inputs == 8 and chk.top1_agreement == 1.0


def test_dynamic_batch_export(tmp_path, fmnist):
    sub = fmnist.extract(fmnist.space.max_arch(), calibration=None).eval()
    path = export_onnx(sub, tmp_path / "d.onnx", sub.input_shape, dynamic_batch=True)
    sess = load_session(path)
    for b in (1, 5):
        out = sess.run(None, {"input": np.zeros((b, *sub.input_shape), np.float32)})[0]
        assert out.shape == (b, 10)


def test_imagenet_family_subnet_onnx_matches_pytorch(tmp_path):
    net = randomize(create_supernet("ofa_mbv3_w1.2", pretrained=False), 3)
    arch = net.space.sample(5)
    arch["r"] = 160
    sub = net.extract(arch, calibration=None).eval()
    path = export_onnx(sub, tmp_path / "o.onnx", sub.input_shape)
    chk = check_onnx(path, sub, torch.randn(2, 3, 160, 160))
    assert chk.max_abs_err < 1e-4, chk


def test_bad_onnx_files_are_one_line_errors(tmp_path, fmnist):
    with pytest.raises(ModelFileError, match="does not exist"):
        load_session(tmp_path / "nope.onnx")
    garbage = tmp_path / "g.onnx"
    garbage.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ModelFileError) as ei:
        load_session(garbage)
    assert "\n" not in str(ei.value)
    sub = fmnist.extract(fmnist.space.min_arch(), calibration=None).eval()
    good = export_onnx(sub, tmp_path / "ok.onnx", sub.input_shape)
    trunc = tmp_path / "t.onnx"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelFileError):
        load_session(trunc)


def test_failed_export_leaves_nothing(tmp_path):
    class Bad(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    from hwnas.errors import ExportError

    with pytest.raises(ExportError):
        export_onnx(Bad(), tmp_path / "x.onnx", (1, 4, 4))
    assert list(tmp_path.iterdir()) == []


def test_trained_imagenet_weights_need_calibration_images_or_an_explicit_none(tmp_path):
    """Deployable subnets are BN-recalibrated: with trained weights and no shipped images, export asks
    for them (one line, nothing written); ``calibration="none"`` keeps the supernet's statistics on purpose."""
    import hwnas
    from hwnas.errors import DataError

    net = randomize(create_supernet("ofa_mbv3_w1.0", pretrained=False), 5)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    arch = dict(net.space.min_arch(), r=128)
    with pytest.raises(DataError, match="no shipped calibration images") as e:
        hwnas.export(arch, tmp_path / "a.onnx", supernet="ofa_mbv3_w1.0", weights=tmp_path / "w.pt")
    assert "\n" not in str(e.value) and not (tmp_path / "a.onnx").exists()
    raw = hwnas.export(arch, tmp_path / "b.onnx", supernet="ofa_mbv3_w1.0", weights=tmp_path / "w.pt",
                       calibration="none")
    assert raw.manifest["bn_recalibrated"] is False
    images = torch.randn(64, 3, 128, 128).numpy()
    np.savez(tmp_path / "calib.npz", images=images)
    cal = hwnas.export(arch, tmp_path / "c.onnx", supernet="ofa_mbv3_w1.0", weights=tmp_path / "w.pt",
                       calibration=tmp_path / "calib.npz")
    assert cal.manifest["bn_recalibrated"] is True
    assert cal.manifest["output_check"]["max_abs_err"] < 1e-4
