"""Dataset layouts: a folder of videos plus its metadata -> a list of clips to decode.

Pure Python (no decoding): each layout reads its CSV(s) or folder tree and returns a
`Dataset` of `Item`s (one per clip: file, start offset, class indices, split) and the class
names. A malformed row is a `LayoutError` naming the file and line and what was expected;
a listed video that is missing is not an error here: decoding reports it with the other bad
files, so a week-long job is not stopped by a download that failed.

Layouts (DESIGN §7):
- vggsound: a CSV of `ytid,start_seconds,label,split` rows (no header; split `train` or
  `test`; a label with a comma is quoted), videos `VIDEOS/<ytid>_<start as 6 digits>.mp4`.
  The download scripts cut each 10 s segment into its own file, so decoding starts at 0 s
  of the file. Classes: the sorted label names.
- audioset: the official segment CSVs (`# YTID, start_seconds, end_seconds,
  positive_labels`, comment lines starting with '#', quoted comma-separated label ids such
  as "/m/09x0r,/m/05zppz"), and optionally class_labels_indices.csv (`index,mid,
  display_name` with a header) for the class order and names (else the sorted label ids).
  `--csv` lists the files, comma-separated, each as SPLIT=PATH or `labels=PATH`; a bare
  path takes its split from its name ('eval' -> test, 'train' -> train,
  'class_labels_indices' -> labels). Videos are `VIDEOS/<YTID>_<int(start) as 6 digits>.EXT`
  (any video extension), cut to the segment like VGGSound's.
- generic: every video file under VIDEOS (the extensions in VIDEO_EXTENSIONS), decoded from
  0 s; with a CSV of `path,label,split` rows (path relative to VIDEOS; an optional header
  row; label empty for unlabelled or several joined by ';'; split empty for the hash split)
  only the listed files are used. Without a CSV the label is the top-level folder's name
  (files directly in VIDEOS are unlabelled) and the split is a stable hash of the path
  (`test_percent` of the files go to test). Panda70M-style collections (cut clips, no
  classes) use this layout.
"""

import csv
import dataclasses
import hashlib
import os

SPLITS = ('train', 'validation', 'test')
LAYOUTS = ('vggsound', 'audioset', 'generic')
VIDEO_EXTENSIONS = ('.mp4', '.m4v', '.mov', '.mkv', '.webm', '.avi', '.flv', '.mpg', '.mpeg',
                    '.ts', '.3gp', '.wmv', '.ogv')


class LayoutError(ValueError):
  """A metadata file or videos folder does not follow its layout."""


@dataclasses.dataclass(frozen=True)
class Item:
  """One clip to decode.

  Attributes:
    key: unique and stable id within the dataset (the file's path relative to VIDEOS).
    path: the video file (may not exist: decoding reports it).
    start_seconds: where the clip starts in the file.
    labels: class indices, the first one the clip's main label; () when unlabelled.
    split: one of SPLITS.
  """
  key: str
  path: str
  start_seconds: float
  labels: tuple[int, ...]
  split: str


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A layout's clips (in metadata order, or sorted by path) and class names (K = len)."""
  layout: str
  items: tuple[Item, ...]
  classes: tuple[str, ...]

  def split_items(self, split: str) -> list[Item]:
    """The items of `split`, in dataset order."""
    return [item for item in self.items if item.split == split]

  def splits(self) -> list[str]:
    """The splits that have items, in SPLITS order."""
    present = {item.split for item in self.items}
    return [s for s in SPLITS if s in present]


def load(layout: str, videos: str, csv_arg: str | None = None, *,
         test_percent: float = 5.0) -> Dataset:
  """The Dataset of `layout` (one of LAYOUTS) over folder `videos` and `csv_arg`."""
  if not os.path.isdir(videos):
    raise LayoutError(f'--videos={videos}: expected a directory of video files')
  if layout == 'vggsound':
    if not csv_arg:
      raise LayoutError('--csv: the vggsound layout needs its CSV of ytid,start,label,split')
    return load_vggsound(csv_arg, videos)
  if layout == 'audioset':
    if not csv_arg:
      raise LayoutError('--csv: the audioset layout needs its segment CSV(s), e.g. '
                        'train=balanced_train_segments.csv,test=eval_segments.csv')
    return load_audioset(parse_audioset_csv_arg(csv_arg), videos)
  if layout == 'generic':
    return load_generic(videos, csv_arg or None, test_percent=test_percent)
  raise LayoutError(f'--layout={layout!r}: expected one of {LAYOUTS}')


def _rows(path: str):
  """(line number, fields) of each non-blank CSV row, whitespace after commas dropped."""
  if not os.path.isfile(path):
    raise LayoutError(f'--csv: {path} not found')
  with open(path, newline='', encoding='utf-8') as f:
    reader = csv.reader(f, skipinitialspace=True)
    for row in reader:
      if any(field.strip() for field in row):
        yield reader.line_num, [field.strip() for field in row]


def _segment_start(text: str, where: str) -> int:
  """A segment's start seconds as the whole number the file names use."""
  try:
    value = float(text)
  except ValueError:
    value = -1.0
  if value < 0 or value != int(value):
    raise LayoutError(f'{where}: start_seconds={text!r}: expected a whole number of '
                      'seconds >= 0')
  return int(value)


def _split_name(text: str, where: str) -> str:
  if text not in SPLITS:
    raise LayoutError(f'{where}: split={text!r}: expected one of {SPLITS}')
  return text


def _video_index(videos: str) -> dict[str, str]:
  """{file name without extension: path} of the video files directly in `videos`."""
  index = {}
  for entry in sorted(os.scandir(videos), key=lambda e: e.name):
    stem, ext = os.path.splitext(entry.name)
    if entry.is_file() and ext.lower() in VIDEO_EXTENSIONS:
      index.setdefault(stem, entry.path)  # Two extensions of one clip: the first by name.
  return index


class _Merger:
  """Collects rows into items; a clip listed twice gets the union of its labels."""

  def __init__(self):
    self.rows = {}  # key -> [path, labels, split, where]

  def add(self, key: str, path: str, labels: list[int], split: str, where: str):
    if key not in self.rows:
      self.rows[key] = [path, list(labels), split, where]
      return
    row = self.rows[key]
    if row[2] != split:
      raise LayoutError(f'{where}: {key} is listed in split {split!r}, but in {row[2]!r} '
                        f'at {row[3]}: expected one split per clip')
    row[1] += [label for label in labels if label not in row[1]]

  def items(self) -> tuple[Item, ...]:
    return tuple(Item(key=key, path=path, start_seconds=0.0, labels=tuple(labels),
                      split=split) for key, (path, labels, split, _) in self.rows.items())


def load_vggsound(csv_path: str, videos: str) -> Dataset:
  """VGGSound: rows `ytid,start_seconds,label,split`; files `<ytid>_<start:06d>.mp4`."""
  rows = []
  for line, row in _rows(csv_path):
    where = f'{csv_path}:{line}'
    if len(row) != 4 or not row[0] or not row[2]:
      raise LayoutError(f'{where}: {",".join(row)!r}: expected ytid,start_seconds,label,split')
    rows.append((row[0], _segment_start(row[1], where), row[2], _split_name(row[3], where),
                 where))
  if not rows:
    raise LayoutError(f'{csv_path}: no rows: expected ytid,start_seconds,label,split rows')
  classes = tuple(sorted({label for _, _, label, _, _ in rows}))
  class_index = {name: i for i, name in enumerate(classes)}
  files, merger = _video_index(videos), _Merger()
  for ytid, start, label, split, where in rows:
    stem = f'{ytid}_{start:06d}'
    merger.add(stem, files.get(stem, os.path.join(videos, stem + '.mp4')),
               [class_index[label]], split, where)
  return Dataset('vggsound', merger.items(), classes)


def parse_audioset_csv_arg(csv_arg: str) -> dict[str, list[str]]:
  """'train=a.csv,test=b.csv,labels=c.csv' (or bare paths) -> {'train': [a.csv], ...}."""
  files = {}
  for part in filter(None, (p.strip() for p in csv_arg.split(','))):
    role, sep, path = part.partition('=')
    if not sep:
      path, name = part, os.path.basename(part).lower()
      role = ('labels' if 'class_labels_indices' in name else 'test' if 'eval' in name
              else 'train' if 'train' in name else '')
      if not role:
        raise LayoutError(f'--csv: cannot tell the split of {part} from its name: write it as '
                          'train=PATH, test=PATH, validation=PATH or labels=PATH')
    if role not in SPLITS + ('labels',):
      raise LayoutError(f'--csv: {part!r}: expected SPLIT=PATH with SPLIT one of '
                        f'{SPLITS + ("labels",)}')
    files.setdefault(role, []).append(path)
  if len(files.get('labels', [])) > 1:
    raise LayoutError(f'--csv: {files["labels"]}: expected at most one labels file')
  if not set(files) - {'labels'}:
    raise LayoutError(f'--csv={csv_arg!r}: expected at least one segment CSV')
  return files


def _audioset_classes(path: str) -> tuple[dict[str, int], tuple[str, ...]]:
  """class_labels_indices.csv -> ({mid: index}, display names in index order)."""
  mids, names = {}, []
  for line, row in _rows(path):
    if row[0] == 'index':
      continue  # The header.
    where = f'{path}:{line}'
    if len(row) != 3 or row[0] != str(len(names)) or not row[1]:
      raise LayoutError(f'{where}: {",".join(row)!r}: expected index,mid,display_name with '
                        f'index {len(names)}')
    mids[row[1]] = len(names)
    names.append(row[2] or row[1])
  return mids, tuple(names)


def load_audioset(files: dict[str, list[str]], videos: str) -> Dataset:
  """AudioSet segment CSVs per split (see `parse_audioset_csv_arg`) over `videos`."""
  rows = []
  for split in (s for s in SPLITS if s in files):
    for path in files[split]:
      for line, row in _rows(path):
        if row[0].startswith('#'):
          continue
        where = f'{path}:{line}'
        if len(row) != 4 or not row[0] or not row[3]:
          raise LayoutError(f'{where}: {",".join(row)!r}: expected YTID, start_seconds, '
                            'end_seconds, "label_id,label_id,..."')
        mids = [m.strip() for m in row[3].split(',') if m.strip()]
        rows.append((row[0], _segment_start(row[1], where), mids, split, where))
  if 'labels' in files:
    class_index, classes = _audioset_classes(files['labels'][0])
  else:
    classes = tuple(sorted({m for _, _, mids, _, _ in rows for m in mids}))
    class_index = {m: i for i, m in enumerate(classes)}
  index, merger = _video_index(videos), _Merger()
  for ytid, start, mids, split, where in rows:
    unknown = [m for m in mids if m not in class_index]
    if unknown:
      raise LayoutError(f'{where}: label ids {unknown} are not in {files["labels"][0]}')
    stem = f'{ytid}_{start:06d}'
    merger.add(stem, index.get(stem, os.path.join(videos, stem + '.mp4')),
               [class_index[m] for m in mids], split, where)
  if not merger.rows:
    raise LayoutError(f'--csv: {files}: no segment rows found')
  return Dataset('audioset', merger.items(), classes)


def hash_split(key: str, test_percent: float) -> str:
  """'test' for a stable `test_percent` share of keys (by SHA-1 of the key), else 'train'."""
  bucket = int.from_bytes(hashlib.sha1(key.encode('utf-8')).digest()[:8], 'big') % 10_000
  return 'test' if bucket < test_percent * 100 else 'train'


def _walk_videos(videos: str) -> list[str]:
  """Paths of the video files under `videos`, relative to it (with '/'), sorted."""
  found = []
  for root, dirs, names in os.walk(videos):
    dirs.sort()
    for name in names:
      if os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS:
        found.append(os.path.relpath(os.path.join(root, name), videos).replace(os.sep, '/'))
  return sorted(found)


def load_generic(videos: str, csv_path: str | None = None, *,
                 test_percent: float = 5.0) -> Dataset:
  """A folder tree of videos, labelled and split by `csv_path` or by folder and hash."""
  if not 0 <= test_percent <= 100:
    raise LayoutError(f'--test_percent={test_percent}: expected a share in [0, 100]')
  entries = []  # (relative path, label names, split or '', where)
  if csv_path:
    for line, row in _rows(csv_path):
      where = f'{csv_path}:{line}'
      if line == 1 and row[0].lower() == 'path':
        continue  # A header row.
      if not 1 <= len(row) <= 3 or not row[0]:
        raise LayoutError(f'{where}: {",".join(row)!r}: expected path[,label[,split]] with a '
                          'path relative to --videos')
      row += [''] * (3 - len(row))
      if row[2]:
        _split_name(row[2], where)
      names = [n.strip() for n in row[1].split(';') if n.strip()]
      entries.append((row[0].replace(os.sep, '/'), names, row[2], where))
  else:
    for rel in _walk_videos(videos):
      entries.append((rel, [rel.split('/')[0]] if '/' in rel else [], '', videos))
  if not entries:
    raise LayoutError(f'{csv_path or videos}: no videos found (extensions '
                      f'{", ".join(VIDEO_EXTENSIONS)})')
  classes = tuple(sorted({n for _, names, _, _ in entries for n in names}))
  class_index = {name: i for i, name in enumerate(classes)}
  merger = _Merger()
  for rel, names, split, where in entries:
    merger.add(rel, os.path.join(videos, rel), [class_index[n] for n in names],
               split or hash_split(rel, test_percent), where)
  return Dataset('generic', merger.items(), classes)
