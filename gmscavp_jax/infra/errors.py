"""The errors a user can cause, defined once at the bottom so every floor can raise them.

`cli.run_or_explain` reports each as one line (exit status 1) instead of a traceback.
"""


class ConfigError(ValueError):
  """A config field holds a value the code cannot run with."""


class NonFiniteError(RuntimeError):
  """Training stopped: too many steps in a row had a non-finite loss or gradient."""


class DamagedCheckpointError(ConfigError):
  """A workdir holds checkpoint step folders but none of them restores.

  A ConfigError, so every door reports it in one line: the fix is the user's (move the
  checkpoints aside to start over, or restore them from a copy).
  """
