"""`python -m emprior --help` shows every command's description whole (issue 26: estep's was cut)."""

import inspect

from emprior.pipeline.cli import build_parser
from emprior.pipeline.commands import COMMANDS


def test_help_shows_whole_descriptions():
    parser = build_parser()
    text = " ".join(parser.format_help().split())
    for cmd in COMMANDS.values():
        first = " ".join((inspect.getdoc(cmd.func) or "").split("\n\n")[0].split())
        assert cmd.help == first and first in text, cmd.name
    assert "until the shard is written; SIGTERM stops after the current block)" in text  # estep's last words
    assert text.count("rerun the job that wrote an artifact and compare bytes.") == 1
