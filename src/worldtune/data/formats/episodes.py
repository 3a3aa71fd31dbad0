"""Robot episodes in the Vidar seed layout: the public API of the reader.

```
DATA_DIR/episodes/<ep>/video.mp4        10 fps (or video_<cam>.mp4 per camera)
DATA_DIR/episodes/<ep>/actions.npy      (T, 14) float, exactly one row per video frame
DATA_DIR/episodes/<ep>/instruction.txt
DATA_DIR/manifest.json                  episode list with splits and frame counts (optional)
```

The code lives in ``episode_files`` (one episode's checks), ``episode_index`` (scan and manifest)
and ``episode_dataset`` (clips for training); import from here.
"""

from worldtune.data.formats.episode_dataset import (
    EpisodeClipDataset,
    EpisodeDataConfig,
    check_config,
    collate_episodes,
    file_sha1,
    tile_grid,
)
from worldtune.data.formats.episode_files import (
    ACTIONS_FILE,
    EPISODES_DIR,
    INSTRUCTION_FILE,
    VIDEO_FILE,
    BadEpisode,
    EpisodeInfo,
    inspect_episode,
    read_instruction,
    video_paths,
)
from worldtune.data.formats.episode_index import (
    MANIFEST_FILE,
    ManifestError,
    assign_splits,
    load_episodes,
    read_manifest,
    scan_episodes,
    write_manifest,
)

__all__ = [
    "ACTIONS_FILE",
    "EPISODES_DIR",
    "INSTRUCTION_FILE",
    "MANIFEST_FILE",
    "VIDEO_FILE",
    "BadEpisode",
    "EpisodeClipDataset",
    "EpisodeDataConfig",
    "EpisodeInfo",
    "ManifestError",
    "assign_splits",
    "check_config",
    "collate_episodes",
    "file_sha1",
    "inspect_episode",
    "load_episodes",
    "read_instruction",
    "read_manifest",
    "scan_episodes",
    "tile_grid",
    "video_paths",
    "write_manifest",
]
