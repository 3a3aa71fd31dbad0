"""`worldtune inspect CONFIG`: what a run would build, without training it.

Parameters are counted on what `Recipe.build_for_inspect` returns, where large models sit on
`meta` (a 5B DiT is counted in well under a second, with no memory); the datasets are the ones
training opens, so bad data fails here as it would at the start of a run.
"""

from __future__ import annotations

from torch import nn

from worldtune.config import RunConfig, to_yaml
from worldtune.train.recipe import Recipe
from worldtune.train.stages import trainable_names


def parameter_table(model: nn.Module, trainable: set[str]) -> list[tuple[str, int, int]]:
    """(top-level module, parameters, trainable parameters) rows."""
    rows: dict[str, list[int]] = {}
    for name, param in model.named_parameters():
        row = rows.setdefault(name.split(".")[0], [0, 0])
        row[0] += param.numel()
        row[1] += param.numel() if name in trainable else 0
    return [(name, total, train) for name, (total, train) in rows.items()]


def inspect_run(cfg: RunConfig, recipe: Recipe) -> str:
    parts = recipe.build_for_inspect(cfg)
    stages = cfg.train.training_stages or {"train": cfg.train}
    lines = ["# resolved config", to_yaml(cfg).rstrip(), "", "# parameters"]
    for stage_name, stage in stages.items():
        trainable = trainable_names(parts.model, stage.trainable_models, parts.trainable_aliases)
        rows = parameter_table(parts.model, trainable)
        total = sum(r[1] for r in rows)
        train = sum(r[2] for r in rows)
        lines.append(f"stage {stage_name} (trainable_models: {stage.trainable_models})")
        for name, count, trainable_count in rows:
            lines.append(f"  {name:<32} {count:>16,} params  {trainable_count:>16,} trainable")
        lines.append(f"  {'total':<32} {total:>16,} params  {train:>16,} trainable ({train / max(total, 1):.1%})")
    for name, module in parts.frozen.items():
        lines.append(f"frozen {name:<25} {sum(p.numel() for p in module.parameters()):>16,} params")
    lines += ["", "# data", f"train items: {len(parts.train_dataset)}"]
    if parts.val_dataset is not None:
        lines.append(f"val items: {len(parts.val_dataset)}")
    extra = recipe.describe_data(parts)
    if extra:
        lines.append(extra)
    per_step = cfg.train.batch_size * cfg.train.gradient_accumulation
    lines.append(f"samples per optimizer step: {per_step} x world size")
    return "\n".join(lines)
