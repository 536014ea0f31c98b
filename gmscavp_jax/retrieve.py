"""Answers one retrieval query against the test split of a trained workdir.

  python -m gmscavp_jax.retrieve --workdir=/tmp/msa --test_index=3 --top_k=5
  python -m gmscavp_jax.retrieve --workdir=/tmp/msa --video=clip.mp4 [--start_seconds=2]

Prints the top-k clips of the other modality (video -> audio and audio -> video) with their
cosine scores. The test embeddings saved at the last evaluation are reused when they belong
to the newest checkpoint; otherwise the split is embedded again from that checkpoint. A
--video (its sound too, when it has any) or --audio file is embedded by that checkpoint's
encoders, from the clip window at --start_seconds.
"""

import json
import sys

from absl import app
from absl import flags

from gmscavp_jax import cli
from gmscavp_jax.inference import retrieval_queries

_WORKDIR = flags.DEFINE_string('workdir', None, 'Workdir of a training run.')
_TEST_INDEX = flags.DEFINE_integer('test_index', None, 'Query: this clip of the test split.')
_VIDEO = flags.DEFINE_string('video', None, 'Query: a video file (and its sound, if any).')
_AUDIO = flags.DEFINE_string('audio', None, 'Query: an audio file (or a video\'s sound).')
_START = flags.DEFINE_float('start_seconds', 0.0, 'Start of the clip window in --video/--audio.')
_TOP_K = flags.DEFINE_integer('top_k', 5, 'How many results to list.')
_DIRECTION = flags.DEFINE_enum('direction', 'both', ['v2a', 'a2v', 'both'],
                               'With --test_index, v2a: the query is its video; a2v: its '
                               'audio; both: each. A file query answers what it has.')
_OUTPUT_JSON = flags.DEFINE_string('output_json', None, 'Also write the answer here as JSON.')
flags.mark_flag_as_required('workdir')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if sum(v is not None for v in (_TEST_INDEX.value, _VIDEO.value, _AUDIO.value)) != 1:
    raise app.UsageError('give exactly one query: --test_index=N, --video=FILE or --audio=FILE')
  cli.run_or_explain(cli.check_paths, dirs={'workdir': _WORKDIR.value},
                     files={'video': _VIDEO.value, 'audio': _AUDIO.value,
                            'output_json': _OUTPUT_JSON.value})
  cli.setup()
  if _TEST_INDEX.value is None:
    out = cli.run_or_explain(retrieval_queries.file_query, _WORKDIR.value, _TOP_K.value,
                             video=_VIDEO.value, audio=_AUDIO.value, start_seconds=_START.value)
    print(f"query: {_VIDEO.value or _AUDIO.value} from {_START.value:g} s, checkpoint "
          f"{out['step']}")
  else:
    try:
      out = cli.run_or_explain(retrieval_queries.test_clip_query, _WORKDIR.value, _TEST_INDEX.value,
                               _TOP_K.value, _DIRECTION.value)
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
        mark = '  <- its own pair' if hit['clip'] == out.get('query') else ''
        print(f"    {rank:2d}. clip {hit['clip']:5d}  class {hit['label']:3d}  "
              f"score {hit['score']:.4f}{mark}")
  if _OUTPUT_JSON.value:
    with open(_OUTPUT_JSON.value, 'w') as f:
      json.dump(out, f, indent=2)


if __name__ == '__main__':
  cli.run(main)
