"""The converter's flags, kept light (no torch) so that `worldtune --help` builds fast."""

from __future__ import annotations

import argparse

DESCRIPTION = "Convert ALOHA-style HDF5 recordings to Ctrl-World latents (Flexiv layout)."
DEFAULT_CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The seed's flags (`flexiv_to_ctrlworld.py`), shared by `worldtune prepare ctrl-world`."""
    p.add_argument("--input_dir", required=True, help="folder of *.hdf5 / *.h5 recordings")
    p.add_argument("--output_dir", required=True, help="e.g. dataset_example/flexiv_data")
    p.add_argument("--dataset_name", required=True, help="meta info goes to <output_dir>_meta_info/<name>")
    p.add_argument("--latent_space", default="svd", choices=["svd", "space_to_depth"],
                   help="SVD VAE latents, or lossless pixels for CPU runs")
    p.add_argument("--vae_path", help="local SVD folder (with vae/) for --latent_space svd")
    p.add_argument("--allow_download", action="store_true", help="allow --vae_path to be a hub id")
    p.add_argument("--factor", type=int, default=4, help="space_to_depth factor")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--encoder_batch", type=int, default=None,
                   help="SVD VAE: frames per encoder call (default: 32, a whole read chunk). On a CPU 2 "
                        "encodes about 2x faster, but latents may differ from the default's in the last bit")
    p.add_argument("--cameras", nargs="+", default=list(DEFAULT_CAMERAS), help="camera names under --image_key, in view order")
    p.add_argument("--image_key", default="observations/images", help="HDF5 group of the camera images")
    p.add_argument("--state_key", default="observations/qpos", help="HDF5 dataset of the robot state")
    p.add_argument("--action_key", default="action", help="HDF5 dataset of the actions")
    p.add_argument("--instruction_key", default="instruction", help="root attribute or dataset holding the instruction")
    p.add_argument("--height", type=int, default=192, help="frame height before encoding")
    p.add_argument("--width", type=int, default=320, help="frame width before encoding")
    p.add_argument("--fps_downsample", type=int, default=1, help="keep every N-th frame")
    p.add_argument("--fps", type=float, default=None, help="recording frame rate (default: file attribute)")
    p.add_argument("--val_ratio", type=float, default=0.1, help="share of episodes in the val split")
    p.add_argument("--seed", type=int, default=42, help="seed of the split")
    p.add_argument("--num_history", type=int, default=6, help="history frames per sample (bounds the listed samples)")
    p.add_argument("--num_frames", type=int, default=5, help="current + future frames per sample")
    p.add_argument("--history_stride", type=int, default=1, help="frames between history frames")
    p.add_argument("--frame_stride", type=int, default=1, help="frames between future frames")
    p.add_argument("--on_bad_sample", default="error", choices=["error", "skip"], help="a bad recording stops the run, or is logged and skipped")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
