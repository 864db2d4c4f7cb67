#!/usr/bin/env bash
# The GPU check: every GPU-relevant path of rgpl-adapt on one machine, in one go, sized to ~7.5 minutes
# (GPU_CHECK_BUDGET_S, default 450: the scale steps e1-e3 get what is left of it).
#
#   OUT=/some/dir bash bench/gpu_check.sh                         # on the GPU machine (device cuda)
#   OUT=/tmp/o PY=.venv/bin/python GPU_CHECK_DEVICE=cpu GPU_CHECK_SMALL=1 GPU_CHECK_WHEELS=0 bash bench/gpu_check.sh
#
# Steps (each logged, timed and time-boxed; a failed or timed-out step is recorded and the next one runs):
#   a0 wheels:   the packages the machine lacks, from .whl/ (pip --no-index) into /tmp/site
#   a  env:      nvidia-smi, versions of torch / transformers / sentence-transformers / onnxruntime
#   e0 store:    (in the background from the start: CPU only) bench/scale.py's synthetic corpus and store at
#                GPU_CHECK_SCALE_DOCS documents (default 1,000,000)
#   b  pytest:   the training, encoding, DDP and torchrun-pipeline tests with RGPL_TEST_DEVICE=$DEVICE
#   c  cli:      `rgpl-adapt adapt --device $DEVICE` on a 300-document synthetic corpus with the test suite's
#                tiny models (generation, mining, labelling, training with remining, ONNX export incl. fp16,
#                serving), then bench/gpu_check.py verify (manifests, device, bf16, export parity)
#   d  torchrun: the same with `torchrun --nproc_per_node 2` (2 ranks on the machine's GPU(s)), verified with
#                each rank's log: the mining, remining and serving encodes split between the ranks
#   e1-e3:       bench/scale.py --device $DEVICE on the store of e0: generate (GPU_CHECK_MAX_QUERIES, default
#                24,000 queries), mine (the tiny BERT), train (100 steps), each while the time budget lasts
#   f  topk:     bench/topk_speed.py on $DEVICE (beside the CPU store of e0): 1M x 384-d in memory and 1M x 32-d
#                on a memory map, 24,000 queries, numpy's search on the CPU timed on a slice
# GPU_CHECK_STEPS picks the steps (default "a b c d e f"; e.g. GPU_CHECK_STEPS="a f e" when time is short).
# Out ($OUT, 5 files): gpu_summary.json (every step: exit code, seconds, log tail, result JSON), gpu_check.log,
# gpu_logs.tar.gz (all step logs, torchrun rank logs, the runs' report.json), scale_gpu.json, scale_store.json.
set -u
OUT=${OUT:?set OUT to the folder that comes back}
PY=${PY:-python3}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
SMALL=${GPU_CHECK_SMALL:-0}
BUDGET=${GPU_CHECK_BUDGET_S:-450}
WANT=" ${GPU_CHECK_STEPS:-a b c d e f} "
want() { [[ "$WANT" == *" $1 "* ]]; }
WORK=${GPU_CHECK_WORK:-/tmp/gpu_check}
if [ "$SMALL" = 1 ]; then
  SCALE_DOCS=${GPU_CHECK_SCALE_DOCS:-3000}; MAX_Q=${GPU_CHECK_MAX_QUERIES:-300}; TRAIN_STEPS=10; CLI_STEPS=8
else
  SCALE_DOCS=${GPU_CHECK_SCALE_DOCS:-1000000}; MAX_Q=${GPU_CHECK_MAX_QUERIES:-24000}; TRAIN_STEPS=100; CLI_STEPS=40
fi
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 1
mkdir -p "$OUT" && rm -rf "$WORK" && mkdir -p "$WORK/logs" "$WORK/runs"
LOGS=$WORK/logs
STEPS=$WORK/steps.jsonl
: > "$STEPS"
T0=$(date +%s)
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export PYTHONPATH=$REPO/adapter:$REPO/plugin:$REPO${PYTHONPATH:+:$PYTHONPATH}

elapsed() { echo $(( $(date +%s) - T0 )); }
left() { echo $(( BUDGET - $(elapsed) )); }

# run_step NAME TIMEOUT_S RESULT_JSON_OR_- CMD...: the command's output to $LOGS/NAME.log, a record to $STEPS
run_step() {
  local name=$1 limit=$2 result=$3; shift 3
  if [ "$limit" -lt 10 ]; then
    echo "[$(elapsed)s] $name: skipped (time budget of ${BUDGET}s spent)"
    printf '{"step":"%s","rc":-1,"seconds":0,"skipped":"time budget spent","log":"","result":""}\n' "$name" >> "$STEPS"
    return 0
  fi
  echo "[$(elapsed)s] $name: start (limit ${limit}s)"
  local t1 t2 rc
  t1=$(date +%s.%N)
  timeout -k 10 "$limit" "$@" > "$LOGS/$name.log" 2>&1
  rc=$?
  t2=$(date +%s.%N)
  local secs
  secs=$(awk -v a="$t1" -v b="$t2" 'BEGIN{printf "%.1f", b-a}')
  [ "$result" = - ] && result=""
  printf '{"step":"%s","rc":%d,"seconds":%s,"timeout_s":%d,"timed_out":%s,"log":"%s","result":"%s"}\n' \
    "$name" "$rc" "$secs" "$limit" "$([ $rc = 124 ] || [ $rc = 137 ] && echo true || echo false)" \
    "$LOGS/$name.log" "$result" >> "$STEPS"
  echo "[$(elapsed)s] $name: rc=$rc in ${secs}s"
  tail -n 3 "$LOGS/$name.log" | cut -c1-300 | sed 's/^/    /'
}

# a0: wheels of what the machine lacks (tantivy, usearch, click-default-group, onnxscript, onnx-ir)
if [ "${GPU_CHECK_WHEELS:-1}" = 1 ] && ls .whl/*.whl > /dev/null 2>&1; then
  # pip when the interpreter has it, else the wheels unpacked as they are (a wheel is a zip of site-packages)
  run_step a0_wheels 120 - bash -c '"$0" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl || for w in .whl/*.whl; do "$0" -m zipfile -e "$w" /tmp/site || exit 1; done' "$PY"
  export PYTHONPATH=/tmp/site:$PYTHONPATH
fi

# a: the machine and the versions
if want a; then
  if [ "$DEVICE" != cpu ]; then run_step a_nvidia_smi 60 - nvidia-smi; fi
  run_step a_env 90 "$WORK/env.json" "$PY" bench/gpu_check.py env "$WORK/env.json"
fi

# e0 (background, CPU): the scale corpus and store, while the GPU steps run
SCALE=$WORK/scale
STORE_PID=
want e && run_step e0_scale_store 330 "$SCALE/scale_store.json" "$PY" bench/scale.py --docs "$SCALE_DOCS" --stages store \
  --device cpu --out "$SCALE" --results scale_store.json &
want e && STORE_PID=$!

# f: exact top-k search speed on $DEVICE (mining's and remining's search), vs numpy on a slice of the queries
if want f; then
  TOPK_ROWS=$([ "$SMALL" = 1 ] && echo 20000 || echo 1000000)
  run_step f1_topk_384 90 - "$PY" bench/topk_speed.py --rows "$TOPK_ROWS" --dim 384 --queries 24000 \
    --cpu-queries 256 --device "$DEVICE"
  run_step f2_topk_32_memmap 90 - "$PY" bench/topk_speed.py --rows "$TOPK_ROWS" --dim 32 --queries 24000 \
    --cpu-queries 1024 --device "$DEVICE" --memmap "$WORK/topk32.npy"
  rm -f "$WORK/topk32.npy"
fi

# b: the tests where a GPU run means something, on $DEVICE
want b && run_step b_pytest 200 - env RGPL_TEST_DEVICE="$DEVICE" "$PY" -m pytest -q -p no:cacheprovider -rfE \
  --junitxml="$LOGS/b_pytest.xml" tests/adapter/test_training.py tests/adapter/test_encoding.py \
  tests/adapter/test_distributed.py tests/adapter/test_pipeline.py tests/adapter/test_onnx_encoder.py

# c: the CLI pipeline on $DEVICE with tiny models
FX=$WORK/fixtures
if want c || want d; then run_step c0_fixtures 120 - "$PY" bench/gpu_check.py fixtures "$FX" --docs 300
ADAPT=(adapt --corpus "$FX/corpus.jsonl" --generator "$FX/t5" --teacher "$FX/cross-encoder" --student "$FX/student"
       --retriever "$FX/student" --queries-per-passage 1 --max-query-len 8 --steps "$CLI_STEPS" --batch-size 16
       --remine-every $((CLI_STEPS / 2)) --max-seq-len 32 --checkpoint-every $((CLI_STEPS / 2)) --warmup-steps 2
       --device "$DEVICE" --scale cpu --chunk-size 64 --fp16 -v)
fi
if want c; then
run_step c1_cli 150 - "$PY" -m rgpl_adapt.cli "${ADAPT[@]}" --out "$WORK/runs/single"
run_step c2_verify 60 "$WORK/verify_single.json" "$PY" bench/gpu_check.py verify "$WORK/runs/single" \
  --device "$DEVICE" --json "$WORK/verify_single.json"
fi

# d: the same under torchrun, 2 ranks (on one GPU they share it: gloo)
if want d; then
run_step d1_torchrun 180 - "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 \
  --log-dir "$LOGS/torchrun" --redirects 3 -m rgpl_adapt.cli "${ADAPT[@]}" --out "$WORK/runs/torchrun"
run_step d2_verify 60 "$WORK/verify_torchrun.json" "$PY" bench/gpu_check.py verify "$WORK/runs/torchrun" \
  --device "$DEVICE" --ranks 2 --rank-logs "$LOGS/torchrun" --json "$WORK/verify_torchrun.json"
fi

# e: the adaptation stages at scale on $DEVICE, on the store of e0
if want e; then
echo "[$(elapsed)s] waiting for e0_scale_store"
wait "$STORE_PID"
export TOKENIZERS_PARALLELISM=true
SCALE_ARGS=(--docs "$SCALE_DOCS" --device "$DEVICE" --out "$SCALE" --results scale_gpu.json --encoder model
            --max-queries "$MAX_Q" --train-steps "$TRAIN_STEPS")
cap() { local l; l=$(left); [ "$1" -lt "$l" ] && echo "$1" || echo "$l"; }
run_step e1_generate "$(cap 150)" "$SCALE/scale_gpu.json" "$PY" bench/scale.py "${SCALE_ARGS[@]}" --stages generate
run_step e2_mine "$(cap 240)" "$SCALE/scale_gpu.json" "$PY" bench/scale.py "${SCALE_ARGS[@]}" --stages mine
run_step e3_train "$(cap 60)" "$SCALE/scale_gpu.json" "$PY" bench/scale.py "${SCALE_ARGS[@]}" --stages train
fi

# out: the summary, the logs, the scale results
"$PY" bench/gpu_check.py summary "$STEPS" "$OUT/gpu_summary.json"
cp "$SCALE/scale_gpu.json" "$SCALE/scale_store.json" "$OUT/" 2>/dev/null
(cd "$WORK" && tar czf "$OUT/gpu_logs.tar.gz" logs steps.jsonl env.json verify_*.json runs/*/report.json \
  runs/*/train/log.jsonl scale/*/pipe-*.log 2>/dev/null)
echo "[$(elapsed)s] done: $OUT/gpu_summary.json"
sleep 1  # let tee write the last lines of gpu_check.log
