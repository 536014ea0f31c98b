"""The two primitives of config checking: one clear error per invalid field."""

from gmscavp_jax.infra import errors


def require(ok: bool, field: str, expected: str, value) -> None:
  """Raises errors.ConfigError naming config.`field`, its value and what was `expected`."""
  if not ok:
    raise errors.ConfigError(f'config.{field}={value!r}: expected {expected}')


def require_widths(widths, field: str, num_groups: int, groups_field: str,
                    allow_empty: bool = False) -> None:
  """Channel widths of a GroupNorm network: positive and divisible by its group count."""
  require((allow_empty or len(widths) >= 1) and
           all(w > 0 and w % num_groups == 0 for w in widths), field,
           f'positive widths divisible by {groups_field}={num_groups}', widths)
