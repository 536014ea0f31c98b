"""Which code made a result: the git commit of the package's checkout."""

import functools
import os
import subprocess


@functools.cache
def code_commit() -> str:
  """The 40-hex commit of the checkout holding this package, with '+dirty' when its tracked
  files have uncommitted changes; 'unknown' outside a git checkout (e.g. an installed wheel)."""
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=here, capture_output=True,
                            text=True, timeout=10, check=True).stdout.strip()
    dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=here,
                           capture_output=True, text=True, timeout=10, check=True).stdout
  except (OSError, subprocess.SubprocessError):
    return 'unknown'
  return commit + ('+dirty' if dirty.strip() else '')
