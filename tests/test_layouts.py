"""Dataset layouts (data/prepare/layouts.py): CSVs and folders -> items, classes, clear errors."""

import os

import pytest

from gmscavp_jax.data.prepare import layouts


def _write(path, text=''):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    f.write(text)
  return str(path)


def test_vggsound_rows_files_classes_and_duplicates(tmp_path):
  videos = tmp_path / 'VIDEOS'
  _write(videos / '-abc_def_000030.mp4')
  csv = _write(tmp_path / 'vgg.csv',
               '-abc_def,30,dog barking,train\n'
               'xyz,5,"cattle, bovinae cowbell",test\n'
               '\n'
               '-abc_def,30,people shouting,train\n')
  data = layouts.load('vggsound', str(videos), csv)
  assert data.classes == ('cattle, bovinae cowbell', 'dog barking', 'people shouting')
  assert [i.key for i in data.items] == ['-abc_def_000030', 'xyz_000005']
  first, second = data.items
  assert first.path == str(videos / '-abc_def_000030.mp4')
  # A clip listed twice gets both labels, the first one first.
  assert first.labels == (1, 2) and first.split == 'train' and first.start_seconds == 0.0
  # A missing video keeps its expected name: decoding reports it as not found.
  assert second.path == str(videos / 'xyz_000005.mp4') and second.labels == (0,)
  assert data.splits() == ['train', 'test']
  assert [i.key for i in data.split_items('test')] == ['xyz_000005']


@pytest.mark.parametrize('row,message', [
    ('abc,30,dog', r'vgg.csv:2: .*expected ytid,start_seconds,label,split'),
    ('abc,thirty,dog,train', r'vgg.csv:2: start_seconds=.thirty.: expected a whole number'),
    ('abc,1.5,dog,train', r'vgg.csv:2: start_seconds=.1.5.'),
    ('abc,30,dog,eval', r"vgg.csv:2: split='eval': expected one of"),
    ('ok,1,dog,test', r"vgg.csv:2: ok_000001 is listed in split 'test', but in 'train' at "
                      r'.*vgg.csv:1'),
])
def test_vggsound_malformed_rows_name_file_and_line(tmp_path, row, message):
  csv = _write(tmp_path / 'vgg.csv', f'ok,1,dog,train\n{row}\n')
  with pytest.raises(layouts.LayoutError, match=message):
    layouts.load('vggsound', str(tmp_path), csv)


def test_missing_inputs_are_layout_errors(tmp_path):
  with pytest.raises(layouts.LayoutError, match='--videos=.*expected a directory'):
    layouts.load('vggsound', str(tmp_path / 'nope'), 'x.csv')
  with pytest.raises(layouts.LayoutError, match='--csv: .*missing.csv not found'):
    layouts.load('vggsound', str(tmp_path), str(tmp_path / 'missing.csv'))
  with pytest.raises(layouts.LayoutError, match='needs its CSV'):
    layouts.load('vggsound', str(tmp_path))
  with pytest.raises(layouts.LayoutError, match="--layout='kinetics'"):
    layouts.load('kinetics', str(tmp_path))


_AUDIOSET_HEADER = ('# Segments csv created Sun Mar  5 10:54:31 2017\n'
                    '# num_ytids=3, num_segs=3, num_unique_labels=3, num_positive_labels=4\n'
                    '# YTID, start_seconds, end_seconds, positive_labels\n')


def test_audioset_segments_labels_file_and_extensions(tmp_path):
  videos = tmp_path / 'videos'
  _write(videos / '--PJHxphWEs_000030.mkv')
  _write(videos / 'notes.txt')
  train = _write(tmp_path / 'balanced_train_segments.csv', _AUDIOSET_HEADER +
                 '--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"\n'
                 'abc, 0.000, 10.000, "/m/05zppz"\n')
  test = _write(tmp_path / 'eval_segments.csv', _AUDIOSET_HEADER +
                'def, 12.000, 22.000, "/t/dd00088"\n')
  labels = _write(tmp_path / 'class_labels_indices.csv',
                  'index,mid,display_name\n0,/m/09x0r,Speech\n1,/m/05zppz,"Male speech, man '
                  'speaking"\n2,/t/dd00088,Gush\n')
  # Bare paths take their role from their names; SPLIT=PATH names it.
  for arg in (f'{train},{test},{labels}', f'train={train},test={test},labels={labels}'):
    data = layouts.load('audioset', str(videos), arg)
    assert data.classes == ('Speech', 'Male speech, man speaking', 'Gush')
    assert [(i.key, i.labels, i.split) for i in data.items] == [
        ('--PJHxphWEs_000030', (0, 2), 'train'), ('abc_000000', (1,), 'train'),
        ('def_000012', (2,), 'test')]
    assert data.items[0].path == str(videos / '--PJHxphWEs_000030.mkv')
  # Without the labels file the classes are the sorted label ids.
  data = layouts.load('audioset', str(videos), f'train={train}')
  assert data.classes == ('/m/05zppz', '/m/09x0r', '/t/dd00088')
  assert data.items[0].labels == (1, 2)


def test_audioset_errors(tmp_path):
  train = _write(tmp_path / 'train.csv', _AUDIOSET_HEADER + 'abc, 0.0, 10.0, "/m/x"\n'
                 'bad, 0.0, 10.0\n')
  labels = _write(tmp_path / 'labels.csv', 'index,mid,display_name\n0,/m/y,Y\n')
  with pytest.raises(layouts.LayoutError, match=r'train.csv:5: .*expected YTID'):
    layouts.load('audioset', str(tmp_path), f'train={train}')
  _write(train, _AUDIOSET_HEADER + 'abc, 0.0, 10.0, "/m/x"\n')
  with pytest.raises(layouts.LayoutError, match=r"train.csv:4: label ids \['/m/x'\] are not in "
                     r'.*labels.csv'):
    layouts.load('audioset', str(tmp_path), f'train={train},labels={labels}')
  with pytest.raises(layouts.LayoutError, match='cannot tell the split of .*segments.csv'):
    layouts.parse_audioset_csv_arg('segments.csv')
  with pytest.raises(layouts.LayoutError, match="'dev=a.csv': expected SPLIT=PATH"):
    layouts.parse_audioset_csv_arg('dev=a.csv')
  with pytest.raises(layouts.LayoutError, match='at least one segment CSV'):
    layouts.parse_audioset_csv_arg('labels=l.csv')


def test_generic_folders_label_and_hash_split(tmp_path):
  for rel in ('dog/a.mp4', 'dog/deep/b.MOV', 'cat/c.webm', 'loose.mp4', 'cat/readme.txt'):
    _write(tmp_path / rel)
  data = layouts.load('generic', str(tmp_path), test_percent=0.0)
  assert [(i.key, i.labels, i.split) for i in data.items] == [
      ('cat/c.webm', (0,), 'train'), ('dog/a.mp4', (1,), 'train'),
      ('dog/deep/b.MOV', (1,), 'train'), ('loose.mp4', (), 'train')]
  assert data.classes == ('cat', 'dog')
  assert layouts.load('generic', str(tmp_path), test_percent=100.0).splits() == ['test']


def test_hash_split_is_stable_and_proportional():
  keys = [f'clips/{i:05d}.mp4' for i in range(4000)]
  splits = [layouts.hash_split(k, 5.0) for k in keys]
  assert splits == [layouts.hash_split(k, 5.0) for k in keys]
  assert 0.04 < splits.count('test') / len(keys) < 0.06
  # Raising the share only moves files into test, never out of it.
  assert all(layouts.hash_split(k, 10.0) == 'test' for k, s in zip(keys, splits)
             if s == 'test')


def test_generic_csv_labels_splits_and_errors(tmp_path):
  csv = _write(tmp_path / 'meta.csv', 'path,label,split\n'
               'a.mp4,dog;bark,test\n'
               'sub/b.mp4,,\n'
               'c.mp4\n')
  data = layouts.load('generic', str(tmp_path), csv, test_percent=0.0)
  assert data.classes == ('bark', 'dog')
  assert [(i.key, i.labels, i.split) for i in data.items] == [
      ('a.mp4', (1, 0), 'test'), ('sub/b.mp4', (), 'train'), ('c.mp4', (), 'train')]
  assert data.items[1].path == os.path.join(str(tmp_path), 'sub/b.mp4')
  _write(csv, 'a.mp4,dog,holdout\n')
  with pytest.raises(layouts.LayoutError, match=r"meta.csv:1: split='holdout'"):
    layouts.load('generic', str(tmp_path), csv)
  _write(csv, 'a.mp4,dog,train,extra\n')
  with pytest.raises(layouts.LayoutError, match=r'meta.csv:1: .*expected path\[,label'):
    layouts.load('generic', str(tmp_path), csv)
  os.makedirs(tmp_path / 'empty')
  with pytest.raises(layouts.LayoutError, match='no videos found'):
    layouts.load('generic', str(tmp_path / 'empty'))
  with pytest.raises(layouts.LayoutError, match='--test_percent=101'):
    layouts.load('generic', str(tmp_path), test_percent=101)
