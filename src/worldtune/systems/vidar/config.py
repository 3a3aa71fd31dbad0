"""Vidar's config sections: the Wan model section and the episode data section with its cache."""

from __future__ import annotations

from dataclasses import dataclass, field

from worldtune.config import RunConfig
from worldtune.data.formats.episodes import EpisodeDataConfig
from worldtune.systems.wan_parts import WanModelConfig


@dataclass
class VidarDataConfig(EpisodeDataConfig):
    # Precomputed latents + prompt embeddings (`worldtune prepare cache`); null decodes videos.
    cache_dir: str | None = None
    # Items encoded per batch while building the cache.
    cache_batch_size: int = 4


@dataclass
class VidarConfig(RunConfig):
    model: WanModelConfig = field(default_factory=WanModelConfig)
    data: VidarDataConfig = field(default_factory=VidarDataConfig)
