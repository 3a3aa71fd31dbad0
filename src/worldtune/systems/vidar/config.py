"""Vidar's config sections: the Wan model section and the episode data section with its cache."""

from __future__ import annotations

from dataclasses import dataclass, field

from worldtune.config import ConfigError, RunConfig
from worldtune.data.formats.episodes import EpisodeDataConfig
from worldtune.systems.wan_parts import WanModelConfig


@dataclass
class VidarDataConfig(EpisodeDataConfig):
    # Precomputed latents + prompt embeddings (`worldtune prepare cache`); null decodes videos.
    cache_dir: str | None = None
    # Items encoded per batch while building the cache.
    cache_batch_size: int = 4


@dataclass
class OutputConfig:
    """The seeds' `output` section: `worldtune export` also copies the artefact (vidar.pt,
    vidarc.pt) to `save_path`."""

    save_path: str | None = None


@dataclass
class LossConfig:
    """The seeds' `loss` section. Stage 1 (vidar) is plain flow matching; the embodiment-aware
    weighting (Eq. 7) is stage 2's (recipe vidarc)."""

    type: str = "flow_matching"
    embodiment_aware: bool = False
    eta: float = 3.0
    idm_path: str | None = None  # an idm run directory or idm.pt (with embodiment_aware)

    def check(self) -> None:
        if self.embodiment_aware and not self.idm_path:
            raise ConfigError("loss.embodiment_aware needs loss.idm_path (an idm run or idm.pt)")
        if self.eta < 0:
            raise ConfigError(f"loss.eta must be >= 0, got {self.eta}")


@dataclass
class VidarConfig(RunConfig):
    model: WanModelConfig = field(default_factory=WanModelConfig)
    data: VidarDataConfig = field(default_factory=VidarDataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def check(self) -> None:
        if self.recipe == "vidar" and (self.loss.type != "flow_matching" or self.loss.embodiment_aware):
            raise ConfigError(f"loss: stage 1 (recipe vidar) trains plain flow_matching, got type {self.loss.type!r}"
                              f"{' with embodiment_aware' if self.loss.embodiment_aware else ''} (that is recipe vidarc)")
