"""Model layout options on one process: activation checkpointing, per-block compile, bf16 autocast."""

from __future__ import annotations

import pytest

from conftest import step_metric, train_example


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    run = tmp_path_factory.mktemp("plain") / "run"
    train_example(run, train={"max_steps": 4})
    return step_metric(run)


def test_activation_checkpointing_recomputes_exactly(tmp_path, plain):
    run = tmp_path / "ac"
    train_example(run, train={"max_steps": 4}, dist={"activation_checkpointing": True})
    assert step_metric(run) == plain


def test_compiled_blocks_match_eager(tmp_path, plain):
    run = tmp_path / "compiled"
    train_example(run, train={"max_steps": 4}, dist={"compile_blocks": True})
    got = step_metric(run)
    assert all(abs(got[s] - plain[s]) < 1e-5 for s in plain)


def test_bf16_autocast_trains_close_to_fp32(tmp_path, plain):
    run = tmp_path / "bf16"
    train_example(run, train={"max_steps": 4}, dist={"mixed_precision": "bf16"})
    got = step_metric(run)
    assert got != plain  # it really ran in bf16
    assert all(abs(got[s] - plain[s]) < 0.02 * max(1.0, abs(plain[s])) for s in plain)
