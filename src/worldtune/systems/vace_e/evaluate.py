"""`worldtune eval vace-e RUN --test_data DIR --output_dir DIR`: the seed's `validate_E.py`.

Every episode of the test folder (same layout as training) is generated from its demonstration and
scored with the three metrics of `metrics.py`; `task_alignment` pairs each episode with the next
one's trajectories (episodes are taken two at a time, so it needs at least two). Writes one
`<task>__<episode>.mp4` per episode (target | generated | control) and `metrics.json`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from worldtune.data.formats.vace_e import VaceEDataset, collate_vace_e
from worldtune.systems.vace_e.generate import OpenedVaceE
from worldtune.systems.vace_e.recipe import RECIPE


@torch.no_grad()
def evaluate(opened: OpenedVaceE, test_data: str | Path, output_dir: str | Path, *,
             num_samples: int | None = None, save_videos: bool = True) -> dict[str, Any]:
    from worldtune.data.video_write import side_by_side, write_video
    from worldtune.train.data import move_to_device

    cfg = opened.cfg
    dataset = VaceEDataset(dataclasses.replace(cfg.data, dataset_base_path=str(test_data)))
    count = min(len(dataset), num_samples or len(dataset))
    out = Path(output_dir)
    per_episode: list[dict[str, Any]] = []
    totals: dict[str, list[float]] = {}
    for start in range(0, count, 2):
        indices = list(range(start, min(start + 2, count)))
        batch = move_to_device(collate_vace_e([dataset[i] for i in indices]), opened.device)
        with torch.autocast(opened.device.type, dtype=torch.bfloat16, enabled=opened.device.type == "cuda"):
            result = RECIPE.sample(opened.parts, batch)
        metrics = {k: v for k, v in result.items() if isinstance(v, float)}
        for key, value in metrics.items():
            totals.setdefault(key, []).extend([value] * len(indices))
        for row, i in enumerate(indices):
            ep = dataset.episodes[i]
            per_episode.append({"task": ep.task, "episode": ep.name, "batch_metrics": metrics})
            if save_videos:
                panels = [result[k][row].detach().float().cpu() for k in ("target", "video", "control")]
                write_video(out / f"{ep.task}__{ep.name}.mp4", side_by_side(*panels), fps=cfg.validation.fps)
    summary = {key: sum(values) / len(values) for key, values in sorted(totals.items())}
    return {"test_data": str(test_data), "episodes": count, "metrics": summary, "per_batch": per_episode}


def table(report: dict[str, Any]) -> str:
    lines = [f"VACE-E on {report['test_data']} ({report['episodes']} episodes)"]
    lines += [f"  {key:<28} {value:9.4f}" for key, value in report["metrics"].items()]
    return "\n".join(lines)
