"""Answers one retrieval query against the test split of a trained workdir.

  python -m gmscavp_jax.retrieve --workdir=/tmp/msa --test_index=3 --top_k=5

Prints the top-k clips of the other modality (video -> audio and audio -> video) with their
cosine scores. The test embeddings saved at the last evaluation are reused when they belong
to the newest checkpoint; otherwise the split is embedded again from that checkpoint.
"""

import json
import sys

from absl import app
from absl import flags

from gmscavp_jax import cli
from gmscavp_jax import train
from gmscavp_jax.evaluators import retrieval

_WORKDIR = flags.DEFINE_string('workdir', None, 'Workdir of a training run.')
_TEST_INDEX = flags.DEFINE_integer('test_index', None, 'Query: this clip of the test split.')
_VIDEO = flags.DEFINE_string('video', None, 'Query: a video file (needs media decoding).')
_AUDIO = flags.DEFINE_string('audio', None, 'Query: an audio file (needs media decoding).')
_TOP_K = flags.DEFINE_integer('top_k', 5, 'How many results to list.')
_DIRECTION = flags.DEFINE_enum('direction', 'both', ['v2a', 'a2v', 'both'],
                               'v2a: the query is a video; a2v: an audio; both: each.')
_OUTPUT_JSON = flags.DEFINE_string('output_json', None, 'Also write the answer here as JSON.')
flags.mark_flag_as_required('workdir')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _VIDEO.value or _AUDIO.value:
    print('error: --video/--audio queries need media decoding, which is not part of this '
          'release yet; use --test_index', file=sys.stderr)
    sys.exit(2)
  if _TEST_INDEX.value is None:
    raise app.UsageError('give a query: --test_index=N')
  cli.setup()
  emb = cli.run_or_explain(train.test_embeddings, _WORKDIR.value)
  try:
    out = retrieval.answer_query(emb, _TEST_INDEX.value, _TOP_K.value, _DIRECTION.value)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  print(f"query: test clip {out['query']} (class {out['query_label']}), "
        f"checkpoint {out['step']}")
  for name in ('v2a', 'a2v'):
    if name in out:
      other = 'audio' if name == 'v2a' else 'video'
      print(f'  {name}: top {len(out[name])} {other} clips')
      for rank, hit in enumerate(out[name], 1):
        mark = '  <- its own pair' if hit['clip'] == out['query'] else ''
        print(f"    {rank:2d}. clip {hit['clip']:5d}  class {hit['label']:3d}  "
              f"score {hit['score']:.4f}{mark}")
  if _OUTPUT_JSON.value:
    with open(_OUTPUT_JSON.value, 'w') as f:
      json.dump(out, f, indent=2)


if __name__ == '__main__':
  app.run(main)
