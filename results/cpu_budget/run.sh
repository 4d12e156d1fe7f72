#!/bin/bash
# The runs behind results/cpu_budget (issue 14), one after another: each `<row>:<seed>` trains one
# run at the CPU budget, then evaluates its tested checkpoint (leuk.eval: noise, shift,
# calibration) into <run>/eval and copies eval.json beside metrics.json.
#
#   DATA=/path/to/all_taleqani OUT=runs/cpu_budget results/cpu_budget/run.sh mseenet:1 mseenet:2 ...
#   python -m leuk.report runs/cpu_budget --export results/cpu_budget --data-root $DATA
#
# Rows: mseenet mobilenet_m resnet18 aldl vgg16 mcb (the paper models and the baseline), mseenet_bg
# (background=randomize; mseenet_bg25 at p=0.25), mseenet_e9 / mseenet_bg_e9 (9 epochs, without and
# with it), mseenet_stain (stain=hed; mseenet_stain_e9 at 9 epochs), mseenet_cl / mseenet_compile
# (CPU speed options), mseenet_leaky and mobilenet_m_leaky (data.group_duplicates=false: the
# papers' naive split). A finished run (its metrics.json) is skipped, so the command can be given
# again after an interruption. Touch $OUT/PAUSE to hold the queue between runs.
set -u
DATA=${DATA:?set DATA to the ALL data set folder (holding Original/)}
OUT=${OUT:-runs/cpu_budget}
PYTHON=${PYTHON:-python}
mkdir -p "$OUT"
# From random weights (no ImageNet weights offline): every layer trains (docs/deviations.md).
COMMON=(budget=cpu model.pretrained=false logger=csv trainer.enable_progress_bar=false "data.root=$DATA")

log() { echo "$(date -u +%FT%T) $*" | tee -a "$OUT/queue.log"; }

run() {  # label seed overrides...
  local label=$1 seed=$2; shift 2
  local d="$OUT/$label/seed$seed"
  while [ -f "$OUT/PAUSE" ]; do sleep 10; done
  if [ ! -f "$d/metrics.json" ]; then
    rm -rf "$d"; log "start $label seed $seed"
    "$PYTHON" -m leuk.train "$@" "${COMMON[@]}" "seed=$seed" "hydra.run.dir=$d" > "$OUT/$label.$seed.log" 2>&1
    log "trained $label seed $seed rc=$?"
  fi
  [ -f "$d/metrics.json" ] && [ ! -f "$d/eval.json" ] || return 0
  local ckpt
  ckpt=$("$PYTHON" -c "import json,os,sys;d=sys.argv[1];print(os.path.join(d,json.load(open(d+'/metrics.json'))['tested_checkpoint']))" "$d")
  "$PYTHON" -m leuk.eval "ckpt_path=$ckpt" "hydra.run.dir=$d/eval" >> "$OUT/$label.$seed.eval.log" 2>&1 \
    && cp "$d/eval/eval.json" "$d/eval.json"
  log "evaluated $label seed $seed rc=$?"
}

for item in "$@"; do
  row=${item%:*}; seed=${item#*:}
  case $row in
    mseenet) run mseenet_paper "$seed" experiment=mseenet_paper model.freeze_backbone_epochs=0 ;;
    mobilenet_m) run mobilenet_m_all "$seed" experiment=mobilenet_m_all ;;
    resnet18) run resnet18 "$seed" model=resnet18 data=all ;;
    aldl) run aldl_paper "$seed" experiment=aldl_paper ;;
    vgg16) run vgg16_paper "$seed" experiment=vgg16_paper 'model.arch.trainable_blocks=[1,2,3,4,5]' ;;
    mcb) run mcb_hypernet_paper "$seed" experiment=mcb_hypernet_paper ;;
    mseenet_bg) run mseenet_paper_bg "$seed" experiment=mseenet_paper model.freeze_backbone_epochs=0 background=randomize ;;
    mseenet_bg25) run mseenet_paper_bg_p025 "$seed" experiment=mseenet_paper model.freeze_backbone_epochs=0 background=randomize augmentation.background.p=0.25 ;;
    mseenet_e9) run mseenet_paper_e9 "$seed" experiment=mseenet_paper model.freeze_backbone_epochs=0 trainer.max_epochs=9 ;;
    mseenet_bg_e9) run mseenet_paper_bg_e9 "$seed" experiment=mseenet_paper model.freeze_backbone_epochs=0 background=randomize trainer.max_epochs=9 ;;
    mseenet_stain) run mseenet_paper_stain "$seed" experiment=mseenet_paper model.freeze_backbone_epochs=0 stain=hed ;;
    mseenet_stain_e9) run mseenet_paper_stain_e9 "$seed" experiment=mseenet_paper model.freeze_backbone_epochs=0 stain=hed trainer.max_epochs=9 ;;
    mseenet_cl) run mseenet_paper_channels_last "$seed" experiment=mseenet_paper model.freeze_backbone_epochs=0 model.channels_last=true ;;
    mseenet_compile) run mseenet_paper_compile "$seed" experiment=mseenet_paper model.freeze_backbone_epochs=0 model.compile=true ;;
    mseenet_leaky) run mseenet_paper_leaky "$seed" experiment=mseenet_paper model.freeze_backbone_epochs=0 data.group_duplicates=false ;;
    mobilenet_m_leaky) run mobilenet_m_all_leaky "$seed" experiment=mobilenet_m_all data.group_duplicates=false ;;
    *) echo "unknown row '$row' in '$item'" >&2; exit 2 ;;
  esac
done
