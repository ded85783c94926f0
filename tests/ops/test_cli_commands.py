"""`classguard`: every command is a module with HELP, add_arguments and run, its --help works,
and main only builds the parser from the table and dispatches."""

from __future__ import annotations

import inspect

import pytest

from ops import cli


@pytest.mark.parametrize("command", [[], *[[name] for name in cli.COMMANDS]])
def test_every_commands_help_exits_0(command, capsys):
    """`classguard [COMMAND] --help` prints a usage and exits 0, for the program and each command."""
    with pytest.raises(SystemExit) as done:
        cli.main([*command, "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: classguard {' '.join(command)}".rstrip())


def test_every_command_is_a_module_with_its_own_parser_and_run():
    """Each command states its help, adds its own arguments and runs itself; main stays short."""
    for name, command in cli.COMMANDS.items():
        assert command.HELP and callable(command.add_arguments) and callable(command.run), name
    assert len(inspect.getsource(cli.main).splitlines()) < 30
