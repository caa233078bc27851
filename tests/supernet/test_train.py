import json

import pytest
import torch

from hwnas.supernet.train import TrainConfig, train_supernet

CFG = dict(epochs=1, batch_size=64, limit_train=256, train_split="calib", checkpoint_every=1, warmup_steps=1)


# vit_fmnist (~50 s) is slow-marked to keep the default suite near 10 minutes; its one-process training
# is also checked step by step against two processes in test_distributed.py
@pytest.mark.parametrize("supernet", ["mbv3_fmnist", pytest.param("vit_fmnist", marks=pytest.mark.slow)])
def test_training_runs_logs_and_resumes_exactly(tmp_path, supernet):
    torch.set_num_threads(1)
    cfg = TrainConfig.for_family(supernet, **CFG)
    # an uninterrupted run
    full = train_supernet(cfg, tmp_path / "full")
    assert (tmp_path / "full" / "supernet.pt").is_file()
    log = [json.loads(line) for line in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["epoch"] == 1 and 0.0 <= log[-1]["val_top1_max"] <= 1.0
    # the same run interrupted after 2 of 4 steps, then resumed
    part = train_supernet(cfg, tmp_path / "resumed", max_steps=2)
    assert part["stopped_at"] == {"epoch": 0, "step": 2}
    assert not (tmp_path / "resumed" / "supernet.pt").exists()
    train_supernet(cfg, tmp_path / "resumed")
    a = torch.load(tmp_path / "full" / "supernet.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "supernet.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5), k


def test_family_recipe_defaults_and_overrides():
    vit = TrainConfig.for_family("vit_fmnist")
    assert vit.optimizer == "adamw" and vit.lr == 1e-3 and vit.weight_decay == 0.05
    assert TrainConfig.for_family("vit_fmnist", lr=1e-3, optimizer=None).lr == 1e-3
    cnn = TrainConfig.for_family("mbv3_fmnist")
    assert cnn == TrainConfig() and cnn.optimizer == "sgd"
