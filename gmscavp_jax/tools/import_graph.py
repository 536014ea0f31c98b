r"""Measures the package's import graph with grimp: modules, arrows, floors, arrows back up.

  python -m gmscavp_jax.tools.import_graph [--package=gmscavp_jax] [--chain]

- modules: the package's modules (a package counts once, as its __init__.py);
- arrows: distinct (importer, imported) pairs of modules inside the package;
- floors: modules on the longest import chain, a cycle of modules counted as one;
- arrows back up: arrows between folders that lie on a cycle of folders. A folder is a
  subpackage of the package (data/prepare/ belongs to data/); a module at the top of the
  package is a folder of its own. In a floor plan with downward imports only there are none.

The measure needs no list of floors, so it compares two versions of the tree whose files sit
in different places; the layered contract in .importlinter checks the intended order.
"""

import collections
import dataclasses
from typing import Iterable, Mapping

from absl import app
from absl import flags
import grimp

from gmscavp_jax import cli

_PACKAGE = flags.DEFINE_string('package', 'gmscavp_jax', 'Package to measure (importable).')
_CHAIN = flags.DEFINE_bool('chain', False, 'Also print one longest import chain.')

Graph = Mapping[str, Iterable[str]]  # Module -> the modules it imports.


@dataclasses.dataclass(frozen=True)
class Measure:
  """What `measure` finds; arrows are (importer, imported) module names."""
  modules: int
  arrows: int
  floors: int
  chain: list[str]  # One longest chain, top first (a cycle shown by one of its modules).
  module_cycles: list[list[str]]  # Groups of modules that import each other in a circle.
  upward: list[tuple[str, str]]  # The arrows back up, sorted.


def strongly_connected(graph: Graph) -> list[list[str]]:
  """The strongly connected components of `graph` (Tarjan), each sorted, leaves first."""
  index, low, stack, on_stack, components = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:  # v is the first of its component to be reached: pop it.
      component = []
      while not component or component[-1] != v:
        component.append(stack.pop())
        on_stack.discard(component[-1])
      components.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return components


def longest_chain(graph: Graph) -> list[str]:
  """One longest path of `graph` with each cycle condensed to its first module, top first."""
  components = strongly_connected(graph)
  component_of = {m: i for i, c in enumerate(components) for m in c}
  # Tarjan lists a component after every component it reaches: one pass, leaves first.
  below = [None] * len(components)  # Longest chain starting at component i.
  for i, component in enumerate(components):
    below[i] = [component[0]]
    for m in component:
      for w in graph.get(m, ()):
        j = component_of[w]
        if j != i and len(below[j]) + 1 > len(below[i]):
          below[i] = [component[0], *below[j]]
  return max(below, key=len, default=[])


def folder(module: str, package: str) -> str:
  """`module`'s folder: PACKAGE.SUB for a module in a subpackage, else the module itself."""
  parts = module.split('.')
  return '.'.join(parts[:2]) if module.startswith(package + '.') and len(parts) > 2 else module


def upward_arrows(arrows: Iterable[tuple[str, str]], package: str) -> list[tuple[str, str]]:
  """The arrows between two folders that lie on a cycle of folders, sorted."""
  folders = collections.defaultdict(set)
  for a, b in arrows:
    if folder(a, package) != folder(b, package):
      folders[folder(a, package)].add(folder(b, package))
  cycle_of = {f: i for i, c in enumerate(strongly_connected(folders)) for f in c}
  return sorted((a, b) for a, b in arrows if folder(a, package) != folder(b, package)
                and cycle_of[folder(a, package)] == cycle_of[folder(b, package)])


def measure(package: str = 'gmscavp_jax') -> Measure:
  """Builds `package`'s import graph (no external packages) and measures it."""
  graph = grimp.build_graph(package, include_external_packages=False, cache_dir=None)
  modules = sorted(graph.modules)
  imports = {m: sorted(i for i in graph.find_modules_directly_imported_by(m) if i != m)
             for m in modules}
  arrows = [(m, i) for m in modules for i in imports[m]]
  chain = longest_chain(imports)
  return Measure(modules=len(modules), arrows=len(arrows), floors=len(chain), chain=chain,
                 module_cycles=[c for c in strongly_connected(imports) if len(c) > 1],
                 upward=upward_arrows(arrows, package))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  m = measure(_PACKAGE.value)
  print(f'{_PACKAGE.value}: {m.modules} modules, {m.arrows} arrows, {m.floors} floors')
  if _CHAIN.value:
    print('longest chain:\n  ' + '\n  -> '.join(m.chain))
  print(f'module cycles ({len(m.module_cycles)}):')
  for cycle in m.module_cycles:
    print('  ' + ' <-> '.join(cycle))
  print(f'arrows back up, inside cycles of folders ({len(m.upward)}):')
  for a, b in m.upward:
    print(f'  {a} -> {b}')


if __name__ == '__main__':
  cli.run(main)
