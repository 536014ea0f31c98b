"""The errors a user can cause, defined once at the bottom so every floor can raise them.

`cli.run_or_explain` reports each as one line (exit status 1) instead of a traceback; a command
line that cannot be parsed is `cli.run`'s, one line with exit status 2.
"""


class ConfigError(ValueError):
  """A config field holds a value the code cannot run with."""


class NonFiniteError(RuntimeError):
  """Training stopped: too many steps in a row had a non-finite loss or gradient."""


class InputError(ValueError):
  """A path given on the command line cannot be used as asked: a file where a folder is
  expected, a folder where a file is, a folder that cannot be written."""


class DamagedCheckpointError(ConfigError):
  """A workdir holds checkpoint step folders but none of them restores.

  A ConfigError, so every door reports it in one line: the fix is the user's (move the
  checkpoints aside to start over, or restore them from a copy).
  """
