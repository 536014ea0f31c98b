"""The FSDP sharding rule and the mesh shapes (pure: no devices beyond the one CPU)."""

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import optax
import pytest

from gmscavp_jax.infra import errors
from gmscavp_jax.infra import sharding
from tests.conftest import tiny_config


def test_mesh_shape_fills_the_axis_left_at_minus_one():
  assert sharding.mesh_shape(8) == (8, 1)
  assert sharding.mesh_shape(8, data=-1, fsdp=2) == (4, 2)
  assert sharding.mesh_shape(8, data=2, fsdp=-1) == (2, 4)
  assert sharding.mesh_shape(8, data=2, fsdp=4) == (2, 4)


@pytest.mark.parametrize('data,fsdp,field', [(-1, 3, 'mesh.fsdp'), (3, 2, 'mesh.data x'),
                                             (-1, -1, 'both -1')])
def test_mesh_shape_names_the_field_that_cannot_tile(data, fsdp, field):
  with pytest.raises(errors.ConfigError, match=field):
    sharding.mesh_shape(8, data=data, fsdp=fsdp)


def test_param_spec_shards_the_largest_divisible_dimension():
  conv = (3, 3, 64, 128)
  assert sharding.param_spec('params/x/conv/kernel', conv, 4, min_size=0) == P(
      None, None, None, 'fsdp')
  # 130 output channels do not divide by 4: the next largest divisible axis (64) is used.
  assert sharding.param_spec('k', (3, 3, 64, 130), 4, min_size=0) == P(None, None, 'fsdp', None)
  # Ties go to the last axis (a square dense kernel shards its outputs).
  assert sharding.param_spec('k', (256, 256), 2, min_size=0) == P(None, 'fsdp')


def test_param_spec_replicates_small_unshardable_and_matching_leaves():
  assert sharding.param_spec('k', (3, 3, 64, 128), 1, min_size=0) == P()  # No fsdp axis.
  assert sharding.param_spec('k', (3, 3, 8, 8), 4, min_size=1024) == P()  # 576 < 1024.
  assert sharding.param_spec('k', (3, 5, 7), 2, min_size=0) == P()  # Nothing divides.
  assert sharding.param_spec('params/log_temperature', (4,), 2, min_size=0,
                             replicate='temperature') == P()
  assert sharding.param_spec('params/norm_out/scale', (256,), 2, min_size=0,
                             replicate='temperature|norm|bias') == P()
  assert sharding.param_spec('', (), 2, min_size=0) == P()  # Scalars (step, Adam count).


def test_tree_specs_give_adam_moments_their_params_layout():
  params = {'encoders': {'dense': {'kernel': jnp.zeros((16, 32)), 'bias': jnp.zeros((32,))}}}
  tree = {'params': params, 'opt_state': optax.adam(1e-3).init(params)}
  specs = sharding.tree_specs(tree, 2, tiny_config('msa', **{'mesh.fsdp_min_size': 0}))
  assert specs['params']['encoders']['dense']['kernel'] == P(None, 'fsdp')
  assert specs['params']['encoders']['dense']['bias'] == P()  # 'bias' is replicated by name.
  adam = specs['opt_state'][0]
  assert adam.mu['encoders']['dense']['kernel'] == P(None, 'fsdp')
  assert adam.nu['encoders']['dense']['bias'] == P()
  assert adam.count == P()


def test_tree_shardings_on_a_one_device_mesh_replicate_everything():
  mesh = sharding.make_mesh()
  tree = {'w': jax.ShapeDtypeStruct((16, 32), jnp.float32)}
  out = sharding.tree_shardings(tree, mesh, tiny_config('msa'))
  assert out['w'].spec == P() and out['w'].mesh.axis_names == ('data', 'fsdp')
