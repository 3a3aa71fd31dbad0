"""`worldtune label lam`: the action codes of every transition of every latent file, as JSON lines."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from worldtune.systems.lam.evaluate import open_split
from worldtune.systems.lam.recipe import RECIPE
from worldtune.train.run import load_run
from worldtune.utils.atomic import atomic_path
from worldtune.utils.device import default_device
from worldtune.utils.logging import progress


@torch.no_grad()
def label(run_dir: str | Path, data_dir: str | Path, out: str | Path, split: str = "all",
          batch_size: int = 64) -> int:
    """One JSON line per transition of every file (all its chunks joined in time): file, frame
    (the index of x_t in the file's latent frames), codes, action_id. Returns the line count."""
    import h5py

    run = load_run(run_dir, RECIPE)
    device = default_device()
    model = run.model(device=device)
    files = open_split(run.cfg, data_dir, split).files
    count = 0
    with atomic_path(out) as tmp, open(tmp, "w") as handle:
        for file in progress(files, desc="files", unit="file"):
            with h5py.File(file.path, "r") as f:
                chunks = torch.from_numpy(f[file.dataset][()]).float()  # [N, C, T, H, W]
            frames = chunks.permute(0, 2, 1, 3, 4).flatten(0, 1)  # [N*T, C, H, W] in time order
            for start in range(0, frames.shape[0] - 1, batch_size):
                x_t = frames[start:start + batch_size].to(device)
                x_next = frames[start + 1:start + 1 + batch_size].to(device)
                x_t = x_t[: x_next.shape[0]]
                indices = model.encode_actions(x_t, x_next).indices
                for k, (codes, action) in enumerate(zip(indices.tolist(), model.action_ids(indices).tolist(),
                                                        strict=True)):
                    handle.write(json.dumps({"file": file.path.name, "frame": start + k, "codes": codes,
                                             "action_id": action}) + "\n")
                    count += 1
    return count
