"""The IDM's commands: `idm label` (also `label idm`) and `eval idm`."""

from __future__ import annotations

import argparse

from worldtune.systems.system import Command

_LABEL_HELP = "write the actions an IDM reads from a video (or from every episode of a DATA_DIR)"
_LABEL_DESCRIPTION = (
    "IDM is a run directory or an idm.pt (worldtune's export, or the released file, which holds only "
    "the weights: then the published size and 518x518 input are assumed). VIDEO_OR_EPISODES is one "
    "video, already tiled as the IDM's training frames (its size must match), and --out an .npy file "
    "[T, action_dim]; or a DATA_DIR of the Vidar layout (episodes/<ep>/video*.mp4), whose cameras are "
    "tiled as in training, and --out a folder of <episode>.npy files. Actions are in joint units."
)


def _label_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("idm", metavar="RUN_OR_IDM_PT", help="an idm run directory or an idm.pt")
    parser.add_argument("target", metavar="VIDEO_OR_EPISODES", help="a video file or a DATA_DIR with episodes/")
    parser.add_argument("--out", required=True, help="actions.npy (one video) or a folder (episodes)")
    parser.add_argument("--batch_size", type=int, default=32, help="frames per forward pass")


def _label(args: argparse.Namespace) -> int:
    from worldtune.systems.idm.label import label

    written = label(args.idm, args.target, args.out, batch_size=args.batch_size)
    for path in written:
        print(path)
    return 0


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="an idm run directory")
    parser.add_argument("--split", default="val", help="train | val | all")
    parser.add_argument("--batch_size", type=int, default=32, help="items (of data.num_frames frames) per forward pass")
    parser.add_argument("--masks", metavar="OUT.mp4", help="write the split's first frames beside what the mask keeps")
    parser.add_argument("--mask_frames", type=int, default=64, help="frames in the --masks video")
    parser.add_argument("--json", help="also write the numbers here (default RUN_DIR/eval/idm_<split>.json)")


def _eval(args: argparse.Namespace) -> int:
    from worldtune.eval.report import print_and_write
    from worldtune.systems.idm.evaluate import evaluate, report_table

    report = evaluate(args.run_dir, split=args.split, batch_size=args.batch_size, masks=args.masks,
                      mask_frames=args.mask_frames)
    print_and_write(report, report_table(report), args.json, args.run_dir, f"idm_{args.split}")
    return 0


COMMANDS = (
    Command("idm", "label", _LABEL_HELP, _label_arguments, _label, description=_LABEL_DESCRIPTION),
    Command("label", "idm", f"{_LABEL_HELP} (same as `worldtune idm label`)", _label_arguments, _label,
            description=_LABEL_DESCRIPTION),
    Command("eval", "idm", "MAE / R^2 per action dimension against the training-mean baseline; --masks video",
            _eval_arguments, _eval),
)
