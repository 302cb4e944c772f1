"""User-facing errors: the CLI prints these as one line (no traceback) and exits with status 2."""


class UserError(Exception):
    """A mistake in the user's input (a path, a file, an option), reported in one line."""


class ConfigError(UserError, ValueError):
    """An option or argument value that cannot be used (an unknown model name, a negative size, ...)."""


class WeightsError(UserError, ValueError):
    """A weight file that is malformed, truncated, of an unknown format, or does not match the model."""


class ResourceError(UserError):
    """A request whose work would not fit the machine (memory), refused before anything is allocated."""
