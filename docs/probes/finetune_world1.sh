#!/bin/bash
# Fine-tuning measurement of docs/training.md: another synthetic world (data.seed=1) as a
# prepared mp4 folder; the world-0 model before, then 1200 steps from scratch, fine-tuned
# (train.init_from), and fine-tuned with frozen encoders, each scored by evaluate.
#   bash docs/probes/finetune_world1.sh SOURCE_WORKDIR OUT     (from the repository root)
set -e
SRC=$1; R=$2
C=configs/msa_msd.py:runlocal
DATA="--config.data.name=vggsound --config.data.data_dir=$R/tfds --config.data.num_classes=16"
python -m gmscavp_jax.tools.render_synthetic --config=$C --config.data.seed=1 --out=$R/w1 \
  --num_train_clips=1000 --num_test_clips=512 --workers=2
python -m gmscavp_jax.prepare --layout=vggsound --videos=$R/w1/VIDEOS --csv=$R/w1/vggsound.csv \
  --data_dir=$R/tfds --config=$C --workers=2
# Before: the source checkpoint scored on world 1 (its config pointed at the new data).
mkdir -p $R/before && cp -r $SRC/checkpoints $R/before/
python - "$SRC" "$R" <<'PY'
import json, sys
src, out = sys.argv[1:]
c = json.load(open(f'{src}/config.json'))
c['data'].update(name='vggsound', data_dir=f'{out}/tfds', num_classes=16)
json.dump(c, open(f'{out}/before/config.json', 'w'), indent=1)
PY
python -m gmscavp_jax.evaluate --workdir=$R/before
for arm in scratch tuned frozen; do
  extra=""
  [ $arm != scratch ] && extra="--config.train.init_from=$SRC"
  [ $arm == frozen ] && extra="$extra --config.diffusion.training=frozen --config.diffusion.encoder_steps=0"
  python -m gmscavp_jax.main --config=$C --workdir=$R/$arm $DATA $extra
  python -m gmscavp_jax.evaluate --workdir=$R/$arm
done
