"""Many users at once on the demo page: the load mode of demo_bench (issue 21, item 4).

`make_requests` writes a set of different uploads: good ones (test clips back to back, of
different lengths and clips, one without a sound track, each asked for its own window and
sampler settings) and bad ones (random bytes, an empty file, the first half of a good mp4, a
video shorter than a clip, a sound with no picture, a file over the size limit).
`reference_answers` asks the page for each once, one at a time, through gradio_client: the
generation is deterministic for a fixed seed, so that answer is the reference (each good
request is asked twice and must come back the same, or the bench stops). `run` then has
`clients` threads, each with its own gradio_client.Client, send requests drawn from the set
(each client a seeded shuffle of it, pass after pass) for `seconds`, while a monitor samples
the server's memory (this process's, where demo_bench serves the page) and the sizes of its
folders every second.

Answered correctly means: a good request's message and both retrieval tables equal the
reference's, and each of its four files (the video with the soundtrack, the spectrogram PNG,
the original and the generated WAV), downloaded from the server, is byte-identical to the
reference's. Repeated answers were measured byte-identical, so no tolerance is needed, and
identical WAV bytes are identical samples. A bad request must get the reference's one-line
'**Cannot use this upload:** NAME REASON.' message (checked once against the expected reason),
no files and empty tables. An exception out of the client (the server failed, or a file could
not be downloaded) is a server error.

Every good request uploads different bytes, as different users' files would be: its video
plus an mp4 'free' box carrying the request's id, which FFmpeg skips, so the decoded video
and the expected answer stay those of its source while gradio, which names uploads by content
hash, stores each one and must delete it again.
"""

import concurrent.futures
import dataclasses
import hashlib
import os
import shutil
import struct
import threading
import time

from gradio_client import Client
from gradio_client import handle_file
import httpx
import numpy as np

from gmscavp_jax.core import config_io
from gmscavp_jax.core import sampling
from gmscavp_jax.data import media_writing
from gmscavp_jax.data import pipeline
from gmscavp_jax.diffusion import samplers
from gmscavp_jax.inference import demo_page

API = '/generate_upload'
SUCCESS = 'Checkpoint '  # How a good answer's message starts.
REFUSAL = '**Cannot use this upload:**'  # How a bad upload's message starts.


@dataclasses.dataclass(frozen=True)
class Request:
  """One request of the set: the file to upload and the page's controls. `reason` is None for
  a good upload, else words the bad upload's message must contain."""
  name: str
  upload: str
  start: float
  sampler: str
  steps: int
  guidance: float
  seed: int
  reason: str | None = None

  @property
  def kind(self) -> str:
    """'good' or 'bad'."""
    return 'good' if self.reason is None else 'bad'


def make_requests(workdir: str, folder: str, *, max_upload_mb: float,
                  settings: list[tuple[str, int, float]] | None = None) -> list[Request]:
  """Writes the uploads to `folder` and returns the requests: 4 good, 6 bad.

  `settings`: the (sampler, steps, guidance) the good requests cycle through (default: the
  page's defaults and a second sampler with 10 steps; each compiles once on the server).
  """
  config = config_io.load_config(workdir)
  clip = config.data.num_frames / config.data.fps
  default = sampling.sampler_settings(config.eval)
  if settings is None:
    other = next(s for s in samplers.OBJECTIVE_SAMPLERS[config.diffusion.objective]
                 if s != default['sampler'])
    settings = [(default['sampler'], default['num_steps'], default['guidance']),
                (other, 10, 3.0)]
  os.makedirs(folder, exist_ok=True)

  def path(name):
    return os.path.join(folder, name)

  # (name, clips, first test clip, with sound, window start in clips).
  good = [('one_clip', 1, 0, True, 0.0), ('three_clips', 3, 3, True, 0.75),
          ('silent_two_clips', 2, 6, False, 0.0), ('two_clips', 2, 9, True, 0.5)]
  requests = []
  for i, (name, clips, first, sound, start) in enumerate(good):
    upload = demo_page.clips_as_upload(workdir, clips * clip, path(name + '.mp4'), first=first,
                                       sound=sound)
    sampler, steps, guidance = settings[i % len(settings)]
    requests.append(Request(name, upload, start * clip, sampler, steps, guidance, seed=i))
  rng = np.random.default_rng(0)  # The random bytes; the same files every run.
  with open(requests[1].upload, 'rb') as f:
    data = f.read()
  test = pipeline.make_source(config, 'test')[0]
  bad = {'random_bytes.mp4': (rng.bytes(64 << 10), 'cannot be decoded'),
         'empty.mp4': (b'', 'the file is empty'),
         'first_half.mp4': (data[:len(data) // 2], 'is truncated'),
         'too_large.mp4': (rng.bytes(int(max_upload_mb * 2**20) + 1), 'is too large')}
  for name, (content, reason) in bad.items():
    with open(path(name), 'wb') as f:
      f.write(content)
    requests.append(Request(name, path(name), 0.0, *settings[0], seed=0, reason=reason))
  media_writing.write_video(path('three_frames.mp4'), test['frames'][:3], config.data.fps)
  media_writing.write_wav(path('sound_only.wav'), test['waveform'], config.audio.sample_rate)
  for name, reason in (('three_frames.mp4', 'is too short'), ('sound_only.wav', 'has no video')):
    requests.append(Request(name, path(name), 0.0, *settings[0], seed=0, reason=reason))
  return requests


def unique_upload(request: Request, folder: str, tag: str) -> str:
  """A good request's upload with a trailing mp4 'free' box holding `tag`, written under the
  same name in `folder` (so the answer's file names stay the same); a bad one as it is."""
  if request.reason is not None:
    return request.upload
  with open(request.upload, 'rb') as f:
    data = f.read()
  box = tag.encode()
  path = os.path.join(folder, os.path.basename(request.upload))
  with open(path, 'wb') as f:
    f.write(data + struct.pack('>I', 8 + len(box)) + b'free' + box)
  return path


def ask(client: Client, http: httpx.Client, request: Request, upload: str) -> dict:
  """The page's answer to `request` with `upload`: message, table rows and the SHA-256 of
  each returned file (downloaded from the server; None where there is none)."""
  *files, v2a, a2v, message = client.predict(
      handle_file(upload), request.start, request.sampler, request.steps, request.guidance,
      request.seed, api_name=API)
  digests = []
  for f in files:
    if f is None:
      digests.append(None)
      continue
    response = http.get(f['url'])
    response.raise_for_status()
    digests.append(hashlib.sha256(response.content).hexdigest())
  return {'message': message, 'v2a': v2a['data'], 'a2v': a2v['data'], 'files': digests}


def reference_answers(url: str, requests: list[Request], folder: str) -> list[dict]:
  """Each request's answer, asked one at a time (good ones twice, with different upload
  bytes written to `folder`, removed after); raises RuntimeError if an answer is not the
  expected kind or not repeatable."""
  client, references = Client(url, verbose=False, download_files=False), []
  os.makedirs(folder, exist_ok=True)
  try:
    with httpx.Client(timeout=None) as http:
      for request in requests:
        answer = ask(client, http, request, unique_upload(request, folder, 'reference 0'))
        message = answer['message']
        if request.reason is None:
          again = ask(client, http, request, unique_upload(request, folder, 'reference 1'))
          mp4, png, _, generated = answer['files']  # No original WAV for a silent video.
          if not (message.startswith(SUCCESS) and mp4 and png and generated and again == answer):
            raise RuntimeError(f'{request.name}: no repeatable answer: {message}')
        elif not (message.startswith(REFUSAL) and request.reason in message
                  and answer['files'] == [None] * 4):
          raise RuntimeError(f'{request.name}: expected "{request.reason}", got: {message}')
        references.append(answer)
  finally:
    client.close()
    shutil.rmtree(folder, ignore_errors=True)
  return references


def tree_size(root: str) -> dict:
  """{'files', 'bytes', 'dirs'} under `root` (files may vanish while it is walked)."""
  files = size = dirs = 0
  for parent, subdirs, names in os.walk(root):
    dirs += len(subdirs)
    for name in names:
      try:
        size += os.stat(os.path.join(parent, name)).st_size
        files += 1
      except FileNotFoundError:
        pass
  return {'files': files, 'bytes': size, 'dirs': dirs}


def rss_bytes(pid: int | str = 'self') -> int:
  """A process's resident memory (VmRSS of /proc/PID/status; this process's by default)."""
  with open(f'/proc/{pid}/status') as f:
    for line in f:
      if line.startswith('VmRSS:'):
        return int(line.split()[1]) * 1024
  raise RuntimeError('no VmRSS in /proc/self/status')


class Monitor(threading.Thread):
  """Samples the RSS of process `pid` (this one by default) and `tree_size` of each of `dirs`
  ({name: path}) every `interval` seconds until `stop`; `samples` are (seconds since start,
  rss, {name: size})."""

  def __init__(self, dirs: dict[str, str], interval: float = 1.0, pid: int | str = 'self'):
    super().__init__(daemon=True)
    self._dirs, self._interval, self._stop_event = dirs, interval, threading.Event()
    self._pid = pid
    self._t0 = time.monotonic()
    self.samples = [self._sample()]

  def _sample(self) -> tuple:
    return (time.monotonic() - self._t0, rss_bytes(self._pid),
            {name: tree_size(path) for name, path in self._dirs.items()})

  def run(self):
    while not self._stop_event.wait(self._interval):
      self.samples.append(self._sample())

  def stop(self) -> list[tuple]:
    self._stop_event.set()
    self.join()
    self.samples.append(self._sample())
    return self.samples


def _client_loop(client: Client, requests: list[Request], references: list[dict],
                 deadline: float, rng: np.random.Generator, folder: str) -> list[dict]:
  """One user: requests in seeded shuffles of the set until `deadline`; a record for each."""
  records = []
  os.makedirs(folder, exist_ok=True)
  with httpx.Client(timeout=None) as http:
    while time.monotonic() < deadline:
      for i in rng.permutation(len(requests)):
        if time.monotonic() >= deadline:
          break
        request = requests[i]
        upload = unique_upload(request, folder, f'{folder} request {len(records)}')
        t0 = time.monotonic()
        try:
          answer, error = ask(client, http, request, upload), None
        except Exception as e:  # pylint: disable=broad-except  (counted, not fatal)
          answer, error = None, f'{type(e).__name__}: {e}'[:300]
        wrong = answer is not None and answer != references[i]
        records.append({'request': request.name, 'kind': request.kind,
                        'latency_s': time.monotonic() - t0, 'error': error, 'wrong': wrong,
                        'answer': f"{request.name}: {answer['message']}" if wrong else None})
  shutil.rmtree(folder)
  return records


def _percentiles(latencies: list[float]) -> dict:
  if not latencies:
    return {}
  p50, p95 = np.percentile(latencies, [50, 95])
  return {'p50': float(p50), 'p95': float(p95), 'max': float(max(latencies))}


def run(url: str, requests: list[Request], references: list[dict], *, clients: int,
        seconds: float, seed: int, folder: str, dirs: dict[str, str],
        server_pid: int | str = 'self') -> dict:
  """`clients` users asking the page at `url` at once for `seconds` (requests under way at
  the end are finished and counted); returns the summary `summary_lines` prints.

  `seed` draws each client's order; `folder` holds the clients' copies of their uploads (each
  client's removed when it ends); `dirs` ({name: path}) are the folders whose sizes are
  sampled every second, with the RSS of process `server_pid` (this one by default).
  """
  users = [Client(url, verbose=False, download_files=False) for _ in range(clients)]
  monitor = Monitor(dirs, pid=server_pid)
  monitor.start()
  t0 = time.monotonic()
  try:
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
      futures = [pool.submit(_client_loop, user, requests, references, t0 + seconds,
                             np.random.default_rng([seed, c]), os.path.join(folder, f'c{c}'))
                 for c, user in enumerate(users)]
      records = [r for f in futures for r in f.result()]
  finally:
    wall = time.monotonic() - t0
    samples = monitor.stop()
    for user in users:
      user.close()
  summary = {'clients': clients, 'seconds': seconds, 'wall_s': wall, 'seed': seed}
  for kind in ('good', 'bad'):
    mine = [r for r in records if r['kind'] == kind]
    summary[kind] = {'requests': len(mine), 'wrong': sum(r['wrong'] for r in mine),
                     'server_errors': sum(r['error'] is not None for r in mine),
                     'latency_s': _percentiles([r['latency_s'] for r in mine
                                                if r['error'] is None])}
  summary['server_errors'] = summary['good']['server_errors'] + summary['bad']['server_errors']
  summary['wrong'] = summary['good']['wrong'] + summary['bad']['wrong']
  summary['error_examples'] = sorted({r['error'] for r in records if r['error']})[:5]
  summary['wrong_examples'] = sorted({r['answer'] for r in records if r['wrong']})[:5]
  summary['requests_per_s'] = len(records) / wall
  rss = [s[1] for s in samples]
  summary['rss_mb'] = {'start': rss[0] / 2**20, 'peak': max(rss) / 2**20, 'end': rss[-1] / 2**20}
  summary['dirs'] = {}
  for name, path in dirs.items():
    sizes = [s[2][name] for s in samples]
    peak = {k: max(s[k] for s in sizes) for k in sizes[0]}  # Each at its own peak.
    summary['dirs'][name] = {'path': path, 'start': sizes[0], 'peak': peak, 'end': sizes[-1]}
  # Every 10th sample: whether memory and folders level off or keep growing.
  picked = samples[::10] + ([] if (len(samples) - 1) % 10 == 0 else samples[-1:])
  summary['timeline'] = [{'t_s': round(t, 1), 'rss_mb': round(r / 2**20, 1),
                          **{name: size['bytes'] for name, size in sizes.items()}}
                         for t, r, sizes in picked]
  return summary


def summary_lines(summary: dict) -> list[str]:
  """The summary of `run` as printed lines."""
  lines = [f"{summary['clients']} clients for {summary['seconds']:g} s "
           f"({summary['wall_s']:.1f} s with the last answers): "
           f"{summary['requests_per_s']:.2f} requests/s, {summary['wrong']} wrong answers, "
           f"{summary['server_errors']} server errors"]
  for kind in ('good', 'bad'):
    s = summary[kind]
    latency = ', '.join(f'{k} {v:.2f} s' for k, v in s['latency_s'].items()) or 'none'
    lines.append(f"  {kind} requests: {s['requests']}, wrong {s['wrong']}, server errors "
                 f"{s['server_errors']}; latency {latency}")
  for error in summary['error_examples']:
    lines.append(f'  error: {error}')
  for answer in summary['wrong_examples']:
    lines.append(f'  wrong answer: {answer}')
  rss = summary['rss_mb']
  lines.append(f"  RSS (server and clients, one process): start {rss['start']:.0f} MB, "
               f"peak {rss['peak']:.0f} MB, end {rss['end']:.0f} MB")
  for name, d in summary['dirs'].items():
    sizes = '; '.join(f"{when} {d[when]['files']} files {d[when]['bytes'] / 2**20:.1f} MB "
                      f"({d[when]['dirs']} folders)" for when in ('start', 'peak', 'end'))
    lines.append(f"  {name} ({d['path']}): {sizes}")
  lines.append('  timeline (s: RSS MB, ' + ', '.join(f'{n} MB' for n in summary['dirs']) + '): '
               + '; '.join(f"{p['t_s']:.0f}: {p['rss_mb']:.0f}, " + ', '.join(
                   f'{p[n] / 2**20:.1f}' for n in summary['dirs']) for p in summary['timeline']))
  return lines
