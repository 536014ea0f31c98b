"""The demo page end to end: what `python -m gmscavp_jax.demo` serves, for a tiny trained
workdir on a free loopback port, asked through gradio's own client (one user, and several at
once) and used in headless Chromium."""

import os
import socket
import tempfile
import time

import av
from gradio_client import Client
from gradio_client import handle_file
import numpy as np
from PIL import Image
import pytest

from gmscavp_jax.core import config_io
from gmscavp_jax.core import sampling
from gmscavp_jax.data import media_writing
from gmscavp_jax.data import pipeline
from gmscavp_jax.evaluators import retrieval
from gmscavp_jax.inference import demo_page
from gmscavp_jax.inference import retrieval_queries
from gmscavp_jax.tools import demo_load
from tests import headless_chromium

MAX_UPLOAD_MB = 1


@pytest.fixture(scope='module')
def workdir(msa_msd_workdir):
  # conftest's tiny msa_msd run, trained once per test run for this file, test_train and
  # test_evaluate; the demo only reads it.
  return msa_msd_workdir[0]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.fixture(scope='module')
def server(workdir, tmp_path_factory):
  """What `python -m gmscavp_jax.demo` serves, in this process on a free loopback port;
  yields its URL and stops it after the module's tests."""
  app = demo_page.serve(workdir, port=_free_port(), max_upload_mb=MAX_UPLOAD_MB,
                       output_dir=str(tmp_path_factory.mktemp('demo')), block=False)
  try:
    yield app.local_url
  finally:
    app.close()


@pytest.fixture(scope='module')
def client(server):
  return Client(server, verbose=False)


def _test_clips(workdir, indices):
  config = config_io.load_config(workdir)
  clips = [pipeline.make_source(config, 'test')[i] for i in indices]
  return config, clips


def _sampler_args(workdir, seed: int = 0) -> tuple:
  """sampler, steps, guidance, seed: the page's defaults, so that the client's requests and
  the browser's share one compiled sampler."""
  s = sampling.sampler_settings(config_io.load_config(workdir).eval)
  return s['sampler'], s['num_steps'], s['guidance'], seed


def test_a_good_upload_gets_a_soundtrack_spectrogram_and_scores(workdir, client, tmp_path):
  # Two test clips back to back with their sound (what demo_bench uploads, by the same
  # function): the demo gives a soundtrack from 0.5 s to the end, its first clip scored.
  config = config_io.load_config(workdir)
  seconds = 2 * config.data.num_frames / config.data.fps
  video = demo_page.clips_as_upload(workdir, seconds, str(tmp_path / 'two clips.mp4'))
  with av.open(video) as container:
    assert float(container.duration / av.time_base) == pytest.approx(seconds, abs=0.2)
  mp4, png, original, generated, v2a, a2v, message = client.predict(
      handle_file(video), 0.5, *_sampler_args(workdir, seed=7), api_name='/generate_upload')
  assert message.startswith('Checkpoint 4.'), message
  assert 'covers the whole video from the start time (1.5 s, 2 overlapping windows)' in message
  with av.open(mp4) as container:
    assert len(container.streams.video) == 1 and len(container.streams.audio) == 1
    assert container.streams.video[0].width == config.data.image_size
    assert container.streams.video[0].frames == 1.5 * config.data.fps  # All of it from 0.5 s.
  with Image.open(png) as image:
    assert image.width > 200 and image.height > 100
  assert original and generated and os.path.getsize(generated) > 0
  for table in (v2a, a2v):
    assert table['headers'] == demo_page.TABLE_HEADERS
    ranks = [row[0] for row in table['data']]
    scores = [row[3] for row in table['data']]
    assert ranks == [1, 2, 3, 4, 5] and scores == sorted(scores, reverse=True)
    assert all(-1.0 <= s <= 1.0 for s in scores)


def test_bad_uploads_get_a_message_and_the_server_keeps_serving(workdir, client, tmp_path):
  config, clips = _test_clips(workdir, (0,))
  text = tmp_path / 'notes.mp4'
  text.write_text('not a video')
  sound_only = str(tmp_path / 'sound.wav')
  media_writing.write_wav(sound_only, clips[0]['waveform'], config.audio.sample_rate)
  short = str(tmp_path / 'short.mp4')
  media_writing.write_video(short, clips[0]['frames'][:3], config.data.fps)
  large = tmp_path / 'large.mp4'
  large.write_bytes(np.random.default_rng(0).bytes(int(1.5 * MAX_UPLOAD_MB * 2**20)))
  expected = {str(text): 'notes.mp4 cannot be decoded', sound_only: 'sound.wav has no video',
              short: 'short.mp4 is too short', str(large): 'large.mp4 is too large'}
  for path, reason in expected.items():
    *results, message = client.predict(handle_file(path), 0.0, *_sampler_args(workdir),
                                       api_name='/generate_upload')
    assert message.startswith('**Cannot use this upload:**') and reason in message, message
    assert results[:4] == [None] * 4 and not results[4]['data'] and not results[5]['data']
  # Still serving: a test clip, whose tables are the retrieve CLI's answer for it.
  *_, v2a, a2v, message = client.predict(2, *_sampler_args(workdir),
                                         api_name='/generate_test_clip')
  assert 'True onsets' in message, message
  answer = retrieval.answer_query(retrieval_queries.test_embeddings(workdir), 2, 5, 'both')
  for table, name in ((v2a, 'v2a'), (a2v, 'a2v')):
    assert [row[1] for row in table['data']] == [hit['clip'] for hit in answer[name]]
    np.testing.assert_allclose([row[3] for row in table['data']],
                               [hit['score'] for hit in answer[name]], atol=1e-4)


def test_the_page_renders_and_generates_in_headless_chromium(workdir, server, tmp_path):
  config, clips = _test_clips(workdir, (3,))
  video = str(tmp_path / 'clip.mp4')
  media_writing.write_video(video, clips[0]['frames'], config.data.fps, clips[0]['waveform'],
                            config.audio.sample_rate)
  with tempfile.TemporaryDirectory() as profile:
    driver = headless_chromium.start(profile)  # Fails naming chromium if it is missing.
    try:
      headless_chromium.open_page(driver, server)
      assert driver.title == demo_page.TITLE
      message = headless_chromium.generate_from_upload(driver, video, timeout_s=120)
      assert message.startswith('Checkpoint 4.'), message
      headless_chromium.save_full_page(driver, str(tmp_path / 'page.png'))
    finally:
      driver.quit()
  with Image.open(tmp_path / 'page.png') as page:
    assert page.width >= 1000 and page.height >= 900


def test_users_at_once_get_right_answers_and_their_files_are_deleted(workdir, tmp_path,
                                                                      monkeypatch):
  # What `demo_bench --clients=N` runs, short: 3 users for 6 s, every good upload different,
  # bad ones among them, each answer checked against one asked alone beforehand. The page
  # keeps uploads and served files 6 s here, in a cache of its own.
  cache = tmp_path / 'gradio'
  monkeypatch.setenv('GRADIO_TEMP_DIR', str(cache))
  sampler, steps, guidance, _ = _sampler_args(workdir)  # Compiled once, as the page's.
  requests = demo_load.make_requests(workdir, str(tmp_path / 'uploads'),
                                     max_upload_mb=MAX_UPLOAD_MB,
                                     settings=[(sampler, steps, guidance)])
  output_dir = tmp_path / 'requests'
  app = demo_page.serve(workdir, port=_free_port(), max_upload_mb=MAX_UPLOAD_MB,
                        output_dir=str(output_dir), block=False, cache_seconds=6)
  try:
    references = demo_load.reference_answers(app.local_url, requests, str(tmp_path / 'ref'))
    summary = demo_load.run(app.local_url, requests, references, clients=3, seconds=6, seed=0,
                            folder=str(tmp_path / 'clients'), dirs={'cache': str(cache)})
    # Every file is older than 6 s within 6 s of the last answer; the sweep runs every 1 s.
    deadline = time.monotonic() + 9
    while demo_load.tree_size(str(cache))['files'] and time.monotonic() < deadline:
      time.sleep(0.5)
    left = demo_load.tree_size(str(cache))
    hash_folders = [name for name in os.listdir(cache) if len(name) == 64]  # SHA-256 names.
  finally:
    app.close()
  assert summary['wrong'] == 0 and summary['server_errors'] == 0, summary
  assert summary['good']['requests'] >= 3 and summary['bad']['requests'] >= 3, summary
  assert summary['bad']['latency_s']['p95'] > 0 and summary['rss_mb']['peak'] > 0
  # Uploads and served files were in the cache and went while the server ran (demo_page's
  # sweep: gradio's own dies under concurrent uploads); of the request folders only the
  # newest 8 stay.
  assert summary['dirs']['cache']['peak']['files'] > 0 and left['files'] == 0, left
  assert not hash_folders  # The folders they were in went too.
  served = 2 * 4 + summary['good']['requests']  # The 4 good references were asked twice.
  assert sorted(os.listdir(output_dir)) == [f'request{i:06d}' for i in range(served - 7,
                                                                              served + 1)]
  assert not os.listdir(tmp_path / 'clients')  # The users' copies of their uploads.
