"""The ``bitkit`` command line: conventions (``python -m bitkit``, ``--version``, help on every
option, fast ``--help``) and options that agree with the code they run."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from bitkit import __version__, cli


def _parsers(parser: argparse.ArgumentParser, name: str = "bitkit"):
    """Every (command path, parser), sub-commands included."""
    yield name, parser
    for action in parser._actions:  # argparse keeps sub-parsers only here
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def test_help_and_version_answer_without_importing_torch():
    code = ("import sys\nfrom bitkit import cli\n"
            "for argv in (['--help'], ['train', '--help'], ['--version']):\n"
            "    try:\n        cli.main(argv)\n    except SystemExit:\n        pass\n"
            "heavy = [m for m in ('torch', 'papermill', 'numpy', 'yaml') if m in sys.modules]\n"
            "print('HEAVY', heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout
    assert f"bitkit {__version__}" in out.stdout and "usage: bitkit train" in out.stdout


def test_python_dash_m_bitkit_is_the_same_program():
    out = subprocess.run([sys.executable, "-m", "bitkit", "--version"], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == f"bitkit {__version__}"
    bad = subprocess.run([sys.executable, "-m", "bitkit", "nosuch"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "invalid choice: 'nosuch'" in bad.stderr


def test_every_command_and_option_has_help():
    missing = []
    for name, parser in _parsers(cli.build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                missing += [f"{name} {a.dest}" for a in action._choices_actions if not a.help]
            elif not action.help:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def test_every_handler_exists():
    handlers = {p.get_default("handler") for _, p in _parsers(cli.build_parser())} - {None}
    assert len(handlers) == 10  # demo, 3 x weights, hyperrule, train, cards, run, prepare, sweep
    for spec in handlers:
        assert callable(cli._handler(spec)), spec


def test_defaults_shown_in_help_are_the_codes():
    from bitkit import hyperrule, runs

    assert (cli.DEFAULT_CELL_TIMEOUT, cli.KERNEL) == (runs.DEFAULT_CELL_TIMEOUT, runs.KERNEL)
    assert (cli.HYPERRULE_BATCH, cli.HYPERRULE_LR) == (hyperrule.BATCH_SIZE, hyperrule.BASE_LR)
    from bitkit import weights

    assert (cli.BIT_BUCKET, cli.FETCH_SOURCES) == (weights.RELEASE_URL, weights.FETCH_SOURCES)


def test_hyperrule_takes_a_card_name_as_the_python_api_does(capsys):
    from bitkit.data import get_card
    from bitkit.hyperrule import hyperrule

    assert cli.main(["hyperrule", "cifar10"]) == 0
    assert capsys.readouterr().out.strip() == hyperrule(get_card("cifar10")).explain().strip()
    assert cli.main(["hyperrule", "cifar10", "--train-size", "100", "--json"]) == 0
    assert '"total_steps": 500' in capsys.readouterr().out  # < 20k examples: 500 steps
    assert cli.main(["hyperrule", "cifar-10"]) == 2
    assert "Did you mean 'cifar10'" in capsys.readouterr().err
    assert cli.main(["hyperrule"]) == 2
    assert "give a dataset card name" in capsys.readouterr().err


@pytest.mark.parametrize("argv, text", [
    (["cards", "--group", "natural"], "unknown group 'natural'"),
    (["weights", "info", "nope.npz"], "nope.npz"),
])
def test_usage_mistakes_exit_2_with_one_line(argv, text, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert text in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
