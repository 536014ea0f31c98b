"""The errors a user can cause, defined once at the bottom so every floor can raise them.

`cli.run_or_explain` reports each as one line (exit status 1) instead of a traceback.
"""


class ConfigError(ValueError):
  """A config field holds a value the code cannot run with."""


class NonFiniteError(RuntimeError):
  """Training stopped: too many steps in a row had a non-finite loss or gradient."""
