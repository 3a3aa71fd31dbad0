"""`worldtune inspect` counts parameters on meta and checks the data without building any model."""

from __future__ import annotations

import time

import pytest

from conftest import REPO
from episode_fixtures import write_dataset
from worldtune.cli import main
from worldtune.models.wan.sizes import PARAMETER_COUNTS

FINETUNE = REPO / "configs" / "vidar" / "vidar_finetune.yaml"


@pytest.fixture(scope="module")
def episodes(tmp_path_factory):
    # 81-frame clips at 10 fps, as the config asks; tiny frames (only the containers are read).
    return write_dataset(tmp_path_factory.mktemp("vidar_data"), n_episodes=3, num_frames=90, fps=10, size=(32, 32))


def test_inspect_of_the_5b_config_counts_on_meta_in_seconds(episodes, capsys):
    start = time.perf_counter()
    assert main(["inspect", str(FINETUNE), f"data.data_dir={episodes}", "data.manifest_path=null",
                 "model.vae=tiny", "model.text_encoder=tiny"]) == 0
    elapsed = time.perf_counter() - start
    out = capsys.readouterr().out
    total = next(line for line in out.splitlines() if line.strip().startswith("total"))
    assert f"{PARAMETER_COUNTS['wan2.2-ti2v-5b']:,} params" in total
    assert f"{PARAMETER_COUNTS['wan2.2-ti2v-5b']:,} trainable" in total  # full fine-tune (lora_rank 0)
    assert "train items: 2" in out and "val items: 1" in out  # the default split of 3 episodes
    assert elapsed < 15, f"inspect took {elapsed:.1f} s"  # building the 5B DiT for real: about 300 s


def test_inspect_counts_lora_adapters_on_meta(episodes, capsys):
    assert main(["inspect", str(FINETUNE), f"data.data_dir={episodes}", "data.manifest_path=null",
                 "model.lora_rank=16"]) == 0
    total = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("total"))
    params, trainable = (int(part.split()[0].replace(",", "")) for part in total.split("total")[1].split("params"))
    assert params > PARAMETER_COUNTS["wan2.2-ti2v-5b"] and 0 < trainable < params // 50


def test_inspect_fails_on_the_data_without_building_models(tmp_path, capsys):
    start = time.perf_counter()
    assert main(["inspect", str(FINETUNE), f"data.data_dir={tmp_path / 'no_such_data'}",
                 "data.manifest_path=null"]) != 0
    assert "no_such_data" in capsys.readouterr().err
    assert time.perf_counter() - start < 15  # no encoder or DiT was built for it
