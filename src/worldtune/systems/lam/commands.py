"""The latent action model's commands: `prepare lam-manifest`, `prepare vae-latents`, `label lam`, `eval lam`."""

from __future__ import annotations

import argparse

from worldtune.systems.system import Command

# What the LAM reads from each .h5 file, for the --help of both data commands.
H5_LAYOUT = (
    "Each DATA_DIR/*.h5 file is one video: a float16 / float32 dataset [N_chunks, C=16, T_latent=2, H, W] "
    "(the seed's: [N, 16, 2, 64, 64]). The dataset looked for is --dataset_name (data.dataset_name in "
    "the config), or by default the file's only 5-D dataset, wherever it is; `prepare vae-latents` "
    "names it 'latents'."
)
_MANIFEST_DESCRIPTION = (
    "Validate DATA_DIR/*.h5 (the latent dataset, 5-D, floats, finite values on a sample of chunks, one "
    "chunk shape in every file) and split them into train / val / test in DATA_DIR/manifest.json. "
    "A split with a non-zero ratio gets at least one file (taken from the largest split); too few files "
    "for that is an error. An existing manifest is never re-split silently: the same files and settings "
    "leave it as it is, another split needs --force. " + H5_LAYOUT
)


def _manifest_arguments(parser: argparse.ArgumentParser) -> None:
    from worldtune.systems.lam.latent_h5_manifest import BAD_SAMPLE_MODES, CHECKED_CHUNKS

    parser.add_argument("data_dir", help="folder of .h5 latent files")
    parser.add_argument("--train_ratio", type=float, default=0.8, help="share of files in the train split")
    parser.add_argument("--val_ratio", type=float, default=0.1, help="share of files in the val split")
    parser.add_argument("--test_ratio", type=float, default=0.1, help="share of files in the test split")
    parser.add_argument("--seed", type=int, default=42, help="seed of the split")
    parser.add_argument("--dataset_name", help="H5 dataset holding the latents (default: each file's only 5-D one)")
    parser.add_argument("--on_bad_sample", choices=BAD_SAMPLE_MODES, default="error",
                        help="error: stop at a bad file, naming it; skip: leave bad files out and list them")
    parser.add_argument("--check_chunks", type=int, default=CHECKED_CHUNKS,
                        help="chunks per file checked for NaN / inf, spread over the file (0: every chunk)")
    parser.add_argument("--force", action="store_true", help="replace an existing manifest with another split")


def _manifest(args: argparse.Namespace) -> int:
    from worldtune.systems.lam.latent_h5_prepare import prepare_lam_manifest, report_lines

    report = prepare_lam_manifest(
        args.data_dir, train_ratio=args.train_ratio, val_ratio=args.val_ratio, test_ratio=args.test_ratio,
        seed=args.seed, dataset_name=args.dataset_name, on_bad_sample=args.on_bad_sample,
        check_chunks=args.check_chunks, force=args.force,
    )  # fmt: skip
    print("\n".join(report_lines(report)))
    return 0


def _latents_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video_dir", help="folder of videos (.mp4, .webm, ...)")
    parser.add_argument("out_dir", help="folder the .h5 files are written to")
    parser.add_argument("--vae", required=True, help="Wan2.1 VAE folder or Wan2.1_VAE.pth ('tiny' for tests)")
    parser.add_argument("--chunk_frames", type=int, default=8, help="video frames per latent chunk")
    parser.add_argument("--size", type=int, default=512, help="frames are resized and centre-cropped to SIZE x SIZE")
    parser.add_argument("--normalise", action="store_true", help="store normalised latents (default: raw)")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="stored dtype")
    parser.add_argument("--dataset_name", default="latents", help="name of the H5 dataset written")


def _latents(args: argparse.Namespace) -> int:
    from worldtune.models.encoders import WanVAE, tiny_wan_vae
    from worldtune.systems.lam.vae_latents import encode_videos_to_h5

    vae = tiny_wan_vae("2.1") if args.vae == "tiny" else WanVAE.from_pretrained(args.vae)
    written = encode_videos_to_h5(args.video_dir, args.out_dir, vae, chunk_frames=args.chunk_frames,
                                  size=args.size, normalise=args.normalise, dtype=args.dtype,
                                  dataset_name=args.dataset_name)
    for path in written:
        print(path)
    return 0


def _label_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a lam run directory")
    parser.add_argument("data_dir", help="folder of .h5 latent files")
    parser.add_argument("--out", required=True, help="output JSON lines, one per transition")
    parser.add_argument("--split", default="all", help="all | train | val | test (needs a manifest)")


def _label(args: argparse.Namespace) -> int:
    from worldtune.systems.lam.label import label

    count = label(args.run_dir, args.data_dir, args.out, split=args.split)
    print(f"worldtune: {count} transitions labelled -> {args.out}")
    return 0


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a lam run directory")
    parser.add_argument("--split", default="test", help="train | val | test")
    parser.add_argument("--data_dir", help="default: the run's data.data_dir")
    parser.add_argument("--json", help="also write the numbers here (default RUN_DIR/eval/lam_<split>.json)")


def _eval(args: argparse.Namespace) -> int:
    from worldtune.eval.report import print_and_write
    from worldtune.systems.lam.evaluate import evaluate, report_table

    report = evaluate(args.run_dir, split=args.split, data_dir=args.data_dir)
    print_and_write(report, report_table(report), args.json, args.run_dir, f"lam_{args.split}")
    return 0


_LATENTS_DESCRIPTION = (
    "Encode every video of VIDEO_DIR into OUT_DIR/<stem>.h5 for the LAM: frames resized and centre-cropped "
    "to SIZE x SIZE, cut into chunks of --chunk_frames frames, each chunk encoded on its own with the "
    "Wan2.1 VAE into a dataset [N_chunks, 16, T_latent, SIZE/8, SIZE/8] (--dtype, named --dataset_name). "
    + H5_LAYOUT
)
_LABEL_HELP = "write the action codes of every transition as JSON lines"

COMMANDS = (
    Command("prepare", "lam-manifest", "validate DATA_DIR/*.h5 and split them into train / val / test (LAM)",
            _manifest_arguments, _manifest, description=_MANIFEST_DESCRIPTION),
    Command("prepare", "vae-latents", "encode videos into LAM H5 latents with the Wan2.1 VAE",
            _latents_arguments, _latents, description=_LATENTS_DESCRIPTION),
    Command("label", "lam", _LABEL_HELP, _label_arguments, _label),
    Command("lam", "label", f"{_LABEL_HELP} (same as `worldtune label lam`)", _label_arguments, _label),
    Command("eval", "lam", "test-split MSE / MAE / codebook usage / perplexity", _eval_arguments, _eval),
)
