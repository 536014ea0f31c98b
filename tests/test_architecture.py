"""The floor plan (DESIGN §8) holds: import-linter's contracts in .importlinter pass on the
package and an import that climbs a floor breaks them; no library module defines flags;
tools/import_graph measures the graph."""

import ast
import glob
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = '.importlinter'
# The linter's console script, started from this interpreter so it needs no PATH entry.
LINT = 'import sys; from importlinter.cli import lint_imports_command; lint_imports_command()'


def lint(root: str) -> subprocess.CompletedProcess:
  """Runs `lint-imports ROOT/.importlinter` on the packages under `root` (the repository or a
  copy of it): grimp finds gmscavp_jax and configs first on the PYTHONPATH, so a copy is
  linted, not the installed package."""
  env = dict(os.environ, PYTHONPATH=root, COLUMNS='200')  # Wide: one import per line.
  return subprocess.run(
      [sys.executable, '-c', LINT, '--no-cache', '--no-logo', os.path.join(root, CONFIG)],
      cwd=root, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_contracts_pass():
  result = lint(ROOT)
  assert result.returncode == 0, result.stdout + result.stderr
  assert ' 0 broken.' in result.stdout


@pytest.fixture(name='copy')
def fixture_copy(tmp_path):
  """A copy of the linted sources (the package, configs/ and .importlinter) in tmp_path."""
  for folder in ('gmscavp_jax', 'configs'):
    shutil.copytree(os.path.join(ROOT, folder), tmp_path / folder,
                    ignore=shutil.ignore_patterns('__pycache__'))
  shutil.copy(os.path.join(ROOT, CONFIG), tmp_path / CONFIG)
  return tmp_path


@pytest.mark.parametrize('module,line,broken', [
    # data/ reaching up to core/ for an error class (errors live in infra/).
    ('data/pipeline.py', 'from gmscavp_jax.core import config_validation',
     'gmscavp_jax.data.pipeline -> gmscavp_jax.core.config_validation'),
    # A library module reading an experiment config.
    ('data/synthetic.py', 'from configs import common', 'gmscavp_jax.data.synthetic -> configs'),
    # A model reaching for the data pipeline.
    ('models/layers.py', 'from gmscavp_jax.data import audio',
     'gmscavp_jax.models.layers -> gmscavp_jax.data.audio'),
    # Two doors sharing code directly instead of through cli.
    ('generate.py', 'from gmscavp_jax import evaluate',
     'gmscavp_jax.generate -> gmscavp_jax.evaluate'),
])
def test_an_upward_import_breaks_a_contract(copy, module, line, broken):
  assert lint(str(copy)).returncode == 0  # The copy itself passes.
  path = copy / 'gmscavp_jax' / module
  path.write_text(path.read_text() + f'\n{line}  # The arrow under test.\n')
  result = lint(str(copy))
  assert result.returncode == 1, result.stdout + result.stderr
  assert 'BROKEN' in result.stdout
  assert broken in result.stdout


def test_a_module_without_a_floor_breaks_the_contract(copy):
  (copy / 'gmscavp_jax' / 'helpers.py').write_text('"""A new module at the top."""\n')
  result = lint(str(copy))
  assert result.returncode == 1
  assert 'gmscavp_jax.helpers' in result.stdout and 'not listed as layers' in result.stdout


def flags_defined_at_import(source: str) -> list[int]:
  """Lines of calls to absl's DEFINE_* or mark_flag*_as_required outside any def or class."""
  lines = []
  for statement in ast.parse(source).body:
    if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      continue
    for node in ast.walk(statement):
      if isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name)):
        name = getattr(node.func, 'attr', getattr(node.func, 'id', ''))
        if name.startswith('DEFINE') or name.startswith('mark_flag'):
          lines.append(node.lineno)
  return lines


def test_no_library_module_defines_flags():
  assert flags_defined_at_import("from absl import flags\nX = flags.DEFINE_bool('x', 0, '')\n"
                                 'def f():\n  flags.DEFINE_bool("y", 0, "")\n') == [2]
  # A command (a door, most of tools/) is a module that runs as __main__: its flags are its
  # interface. Every other module is a library, imported by others, and defines none.
  sources = {}
  for path in glob.glob(os.path.join(ROOT, 'gmscavp_jax', '**', '*.py'), recursive=True):
    with open(path) as f:
      sources[os.path.relpath(path, ROOT)] = f.read()
  library = {p: s for p, s in sources.items() if "if __name__ == '__main__':" not in s}
  assert {'gmscavp_jax/cli.py', 'gmscavp_jax/train.py', 'gmscavp_jax/tools/runs.py'
          } <= set(library) and len(library) > 40
  defining = {}
  for path, source in library.items():
    if lines := flags_defined_at_import(source):
      defining[path] = lines
  assert not defining, f'library modules define flags at import: {defining}'


def test_import_graph_measures_a_toy_package(tmp_path, monkeypatch):
  from gmscavp_jax.tools import import_graph  # pylint: disable=g-import-not-at-top
  files = {
      '__init__.py': '', 'b.py': '', 'sub/__init__.py': '', 'sub/z.py': '',
      'a.py': 'from toy_floors.sub import x',
      'sub/x.py': 'from toy_floors.sub import y',
      'sub/y.py': 'from toy_floors.sub import x\nfrom toy_floors import b, c',
      'c.py': 'from toy_floors.sub import z',  # c <-> sub/: a cycle of folders.
  }
  for name, text in files.items():
    path = tmp_path / 'toy_floors' / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(text + '\n')
  monkeypatch.syspath_prepend(str(tmp_path))
  m = import_graph.measure('toy_floors')
  assert (m.modules, m.arrows, m.floors) == (8, 6, 4)
  assert m.chain == ['toy_floors.a', 'toy_floors.sub.x', 'toy_floors.c', 'toy_floors.sub.z']
  assert m.module_cycles == [['toy_floors.sub.x', 'toy_floors.sub.y']]
  assert m.upward == [('toy_floors.c', 'toy_floors.sub.z'), ('toy_floors.sub.y', 'toy_floors.c')]


def test_import_graph_runs_on_the_package():
  result = subprocess.run([sys.executable, '-m', 'gmscavp_jax.tools.import_graph', '--chain'],
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True,
                          text=True, timeout=120, check=True)
  assert re.match(r'gmscavp_jax: \d+ modules, \d+ arrows, \d+ floors\nlongest chain:\n  ',
                  result.stdout), result.stdout
