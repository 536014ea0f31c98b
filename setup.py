"""gmscavp_jax: multi-scale contrastive + generative audio-video pretraining in JAX."""

import pathlib

import setuptools

HERE = pathlib.Path(__file__).parent


def _requirements(name):
  """The requirements listed in file `name`, following `-r OTHER` includes as pip does."""
  out = []
  for line in (HERE / name).read_text().splitlines():
    line = line.strip()
    if line.startswith('-r '):
      out += _requirements(line[3:].strip())
    elif line and not line.startswith('#'):
      out.append(line)
  return out


setuptools.setup(
    name='gmscavp_jax',
    version='0.1.0',
    description='GMS-CAVP: multi-scale contrastive and generative audio-video pretraining',
    long_description=(HERE / 'README.md').read_text(),
    long_description_content_type='text/markdown',
    python_requires='>=3.11',
    packages=setuptools.find_packages(include=['gmscavp_jax', 'gmscavp_jax.*', 'configs']),
    install_requires=_requirements('requirements.txt'),
    extras_require={'test': _requirements('requirements-test.txt'),
                    'demo': _requirements('requirements-demo.txt'),
                    'onnx': _requirements('requirements-onnx.txt'),
                    'torch': _requirements('requirements-torch.txt')},
)
