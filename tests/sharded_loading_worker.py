"""Run by torchrun (tests/test_sharded_loading.py): a Wan DiT built on meta, sharded with FSDP2 by
the trainer's `prepare_model`, then filled by the recipe hook (`wan_parts.dit_loader`).

    sharded_loading_worker.py OUT SPEC_JSON

SPEC_JSON: {"runs": [{"name": ..., "model": {WanModelConfig fields}, "check_file": bool}, ...],
"seed": int}. For each run, rank r writes `OUT/<name>.rank<r>.pt`: its peak resident-memory growth
while building and loading, its local shards with their regions, equality of those shards with the
checkpoint file read by safetensors itself, and the output of one forward.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from types import SimpleNamespace

import psutil
import torch
import torch.distributed as dist

from worldtune.config import DistConfig
from worldtune.models.lora import LoraSettings
from worldtune.systems.wan_parts import WanModelConfig, build_dit, dit_loader
from worldtune.train.distributed import default_blocks, init_distributed, prepare_model
from worldtune.utils.weights import local_region


def model_config(fields: dict) -> WanModelConfig:
    """A WanModelConfig from JSON-able fields (`lora` as a dict)."""
    if "lora" in fields:
        fields = {**fields, "lora": LoraSettings(**fields["lora"])}
    return WanModelConfig(**fields)


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def shards_match_file(model: torch.nn.Module, folder: Path) -> bool:
    """Every local shard equals its region of the checkpoint, read by safetensors' own slicing."""
    from safetensors import safe_open

    with safe_open(str(folder / "diffusion_pytorch_model.safetensors"), "pt") as handle:
        for name, param in model.named_parameters():
            expected = handle.get_slice(name)[local_region(param)]
            if not torch.equal(param.to_local(), expected):
                return False
    return True


def forward(model: torch.nn.Module) -> torch.Tensor:
    config = model.config
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, config.in_dim, 2, 4, 4, generator=g)
    context = torch.randn(1, 5, config.text_dim, generator=g)
    with torch.no_grad():
        return model(x, torch.tensor([321.0]), context)


def run(spec: dict, out: Path, seed: int, env) -> None:
    cfg = SimpleNamespace(model=model_config(spec["model"]), dist=DistConfig())
    torch.manual_seed(seed)  # as the trainer seeds every rank before building
    dist.barrier()
    before = psutil.Process().memory_info().rss
    model = build_dit(cfg.model)
    on_meta = all(p.is_meta for p in model.parameters())
    model = prepare_model(model, default_blocks(model), cfg.dist, env)
    dit_loader(cfg)(model, env)
    growth = peak_rss() - before
    result = {
        "built_on_meta": on_meta,
        "peak_growth": growth,
        "local_bytes": sum(p.to_local().numel() * p.element_size() for p in model.parameters()),
        "shards": {name: (local_region(p), p.to_local().clone()) for name, p in model.named_parameters()}
        if spec.get("keep_shards") else {},
        "shards_match_file": shards_match_file(model, Path(spec["model"]["ckpt_dir"]))
        if spec.get("check_file") else None,
        "forward": forward(model),
    }
    torch.save(result, out / f"{spec['name']}.rank{env.rank}.pt")


def main() -> None:
    out, spec = Path(sys.argv[1]), json.loads(sys.argv[2])
    env = init_distributed(DistConfig())
    try:
        for one in spec["runs"]:
            run(one, out, spec["seed"], env)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
