"""Errors a user can fix: stages print them as one line and exit 1, without a traceback."""


class PipelineError(Exception):
    """Something outside the code is wrong (input, config, data); the message says the fix."""


class ConfigError(PipelineError):
    """A config value is out of range or inconsistent."""


class DataError(PipelineError):
    """A data file is missing, corrupt or does not match its checksum."""


class OutputError(DataError):
    """An output cannot be written where it goes: no space left, or no permission."""


class TrainingError(PipelineError):
    """Training diverged (NaN loss) or could not run."""
