"""The command line is built from the systems registry: it names no system, lists every system's
commands, documents every flag, and builds without importing torch."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

import pytest

from conftest import REPO
from worldtune.cli import VERB_HELP, build_parser, main
from worldtune.systems import REGISTRY, all_systems

CLI_SOURCE = (REPO / "src" / "worldtune" / "cli.py").read_text()


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_cli_names_no_system():
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_-]*", CLI_SOURCE))
    for system in all_systems():
        assert system.name not in words, system.name
        for command in system.commands:
            if command.name and command.name not in VERB_HELP:  # `lam label` names a generic verb
                assert command.name not in words, command.name
    assert not re.search(r"worldtune\.systems\.[a-z_]+ import|import worldtune\.systems\.", CLI_SOURCE)  # the registry only


def test_every_declared_command_is_reachable():
    verbs = _subparsers(build_parser())
    for system in all_systems():
        for command in system.commands:
            parser = verbs[command.verb]
            if command.name:
                assert command.name in _subparsers(parser), (command.verb, command.name)


def test_top_level_and_generate_help_list_every_system_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    for command in (c for s in all_systems() for c in s.commands):
        assert command.verb in top
        if command.name and command.verb != "lam":
            assert command.name in top
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    generate = capsys.readouterr().out
    names = [c.name for s in all_systems() for c in s.commands if c.verb == "generate"]
    assert names and all(name in generate for name in names)


def test_train_help_lists_every_recipe(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert all(name in text for name in REGISTRY)


def test_every_flag_has_help():
    missing = []

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*path, name])
            elif not action.help and action.dest != "help":
                missing.append(" ".join([*path, *(action.option_strings or [action.dest])]))

    walk(build_parser(), ["worldtune"])
    assert missing == []


def test_a_verb_alone_prints_its_commands(capsys):
    assert main(["eval"]) == 2
    out = capsys.readouterr().out
    assert "lam" in out and "ctrl-world" in out


def test_help_builds_without_torch():
    code = "import sys; from worldtune.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_seeds_training_flags_are_overrides():
    from worldtune.cli import with_seed_flags

    seed_style = ["train", "--config", "configs/vidar/vidarc_causal.yaml", "--output_dir", "outputs/vidarc",
                  "--learning_rate", "1e-4", "--debug", "--max_steps", "100", "--train.warmup_steps=5"]
    assert with_seed_flags(seed_style) == [
        "train", "configs/vidar/vidarc_causal.yaml", "output_dir=outputs/vidarc", "train.learning_rate=1e-4",
        "log.log_frequency=1", "train.max_steps=100", "train.warmup_steps=5"]
    lam = ["train", "configs/lam/train.yaml", "--data_dir", "h5", "--test_mode", "--batch_size", "4"]
    assert with_seed_flags(lam) == ["train", "configs/lam/train.yaml", "data.data_dir=h5", "train.test_mode=true",
                                    "train.batch_size=4"]
    plain = ["train", "configs/lam/train.yaml", "train.batch_size=4"]
    assert with_seed_flags(plain) == plain
    assert main(["train", "--config", "configs/lam/train.yaml", "--no_such_flag", "1"]) == 2
