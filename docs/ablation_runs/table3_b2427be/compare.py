"""Table 3 at the defaults of b2427be (the overlapping video stem with (32, 64) stages, 27a8811)
against Table 3 at the defaults of 53a350f (the 8x8 patchify with (16, 32); everything else
the same): per config, mean ± std over 3 seeds and the 95% Welch interval of new - old (bold
when it excludes 0).

  python docs/ablation_runs/table3_b2427be/compare.py   # from the repository root
"""
import importlib.util
import os

HERE = os.path.dirname(os.path.abspath(__file__))
OLD = os.path.join(os.path.dirname(HERE), 'table3_53a350f')
# The table before's metrics, loader and printer, so both tables compare alike.
_spec = importlib.util.spec_from_file_location('table3_before', os.path.join(OLD, 'compare.py'))
before = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(before)


def main():
  run = lambda folder: lambda name, seed: os.path.join(folder, f'{name}-runlocal-seed{seed}')
  before.table(run(HERE), run(OLD), against='before')


if __name__ == '__main__':
  main()
