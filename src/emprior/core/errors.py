"""Exceptions whose message is a single line that names the file, field or value at fault."""


class EmpriorError(Exception):
    """Base class: the CLI prints ``error: <message>`` (one line) and exits with status 2."""


class ConfigError(EmpriorError):
    """A config key is unknown, mistyped, of the wrong type or out of range."""


class ArtifactError(EmpriorError):
    """An artifact is missing, truncated, tampered with or of the wrong shape."""


class DataError(EmpriorError):
    """A dataset or weights file is missing or malformed."""


class NumericalError(EmpriorError):
    """NaN/Inf appeared in sampling or training."""


class Preempted(EmpriorError):
    """The job got SIGTERM (SLURM's warning before its time limit) and stopped after saving what it had
    done (the M-step's resume state, the E-step's finished blocks); a rerun continues from there.
    The CLI prints ``preempted: <message>`` and exits with status 143 (128 + SIGTERM)."""


class DiskFullError(EmpriorError):
    """A write ran out of disk space or quota (ENOSPC / EDQUOT): the message names the file, the bytes it
    needed and the bytes free; nothing partial is left. The CLI exits with status 1 (not 2: the input
    was fine, the machine was not)."""
