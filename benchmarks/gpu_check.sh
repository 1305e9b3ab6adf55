#!/usr/bin/env bash
# GPU checks of metatune, at most about 8 minutes in all, every step under `timeout`:
#   (a) CUDA against CPU meta-gradients, float64, every learner, eager and compiled
#       (benchmarks/gpu_grads.py; relative error < 1e-8);
#   (b) throughput: sine MAML meta-batch 25 (benchmarks/throughput.py, 1 thread, small counts)
#       and conv4 5-way 5-shot ms per task for maml, metasgd, pamela, cxgrad
#       (benchmarks/learners.py --conv4 only), next to PAMELA's Table 1;
#   (c) aggregate throughput of 4 compiled trials packed on the GPU against one alone
#       (benchmarks/gpu_pack.py).
# Without a GPU it prints "not run: no GPU available" and exits 0. Output goes to stdout and to
# $OUT/gpu_check.txt if OUT is set, else benchmarks/gpu_results/gpu_check-<date>.txt (JSON of each
# step next to it). Compiled graphs go to a persistent cache, $METATUNE_COMPILE_CACHE (default
# ${TMPDIR:-/tmp}/metatune-gpu-check-cache), so a second run on the machine compiles much less.
#
# Knobs (environment): PYTHON (default .venv/bin/python, else python3); GPU_CHECK_SECONDS (total
# budget, default 465); GPU_CHECK_LEARNERS (step a, default all); GPU_CHECK_CONV4_SIZE (84);
# GPU_CHECK_JOBS (processes of step a, default 6); GPU_CHECK_STEPS (which of a, b, c to run, default "a b c"); GPU_CHECK_DEVICE (default cuda; "cpu" runs the steps on the CPU to test this script's plumbing
# only -- slow, and the figures mean nothing).
set -u
cd "$(dirname "$0")/.." || exit 1

PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
DEV=${GPU_CHECK_DEVICE:-cuda}

if [ "$DEV" = cuda ]; then
    avail=$(timeout 120 "$PY" -c 'import torch; print(torch.cuda.is_available())' 2>/dev/null | tail -n 1)
    if [ "$avail" != "True" ]; then
        echo "not run: no GPU available"
        exit 0
    fi
fi

if [ -n "${OUT:-}" ]; then
    RESDIR=$OUT
    RESULT=$OUT/gpu_check.txt
else
    RESDIR=benchmarks/gpu_results
    RESULT=$RESDIR/gpu_check-$(date -u +%Y%m%dT%H%M%SZ).txt
fi
mkdir -p "$RESDIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export METATUNE_COMPILE_CACHE=${METATUNE_COMPILE_CACHE:-${TMPDIR:-/tmp}/metatune-gpu-check-cache}
export OMP_NUM_THREADS=1
TOTAL=${GPU_CHECK_SECONDS:-465}
STEPS=${GPU_CHECK_STEPS:-a b c}

# budget LIMIT -> min(LIMIT, seconds left), 0 when fewer than 15 are left
budget() {
    local left=$((TOTAL - SECONDS))
    if [ "$left" -lt 15 ]; then echo 0; elif [ "$1" -lt "$left" ]; then echo "$1"; else echo "$left"; fi
}

# step NAME LIMIT CMD... : run CMD under timeout, say how it ended
step() {
    local name=$1 lim
    lim=$(budget "$2")
    shift 2
    if [ "$lim" -eq 0 ]; then
        echo "-- $name: skipped (out of time)"
        return 0
    fi
    echo "-- $name (limit ${lim} s): $*"
    local t0=$SECONDS rc
    timeout --kill-after=5 "$lim" "$@"
    rc=$?
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "-- $name: TIMED OUT after $((SECONDS - t0)) s (what it printed above is partial)"
    else
        echo "-- $name: exit $rc after $((SECONDS - t0)) s"
    fi
    return 0
}

main() {
    echo "# metatune gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname) | device $DEV | budget ${TOTAL} s"
    "$PY" - <<'EOF'
import torch
print(f"# torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}")
EOF
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

    [[ $STEPS == *a* ]] && grads_step
    [[ $STEPS == *b* ]] && throughput_step
    [[ $STEPS == *c* ]] && packing_step
    echo
    echo "# gpu_check done in ${SECONDS} s; results: $RESULT"
}

grads_step() {
    echo
    echo "== (a) CUDA vs CPU meta-gradients, float64, every learner, eager and compiled"
    rm -f "$RESDIR"/gpu_grads_*.log "$RESDIR"/gpu_grads_*.json
    local learners
    learners=${GPU_CHECK_LEARNERS:-$(timeout 60 "$PY" benchmarks/gpu_grads.py --list 2>/dev/null | tail -n 1)}
    # JOBS processes (compilation is CPU-bound and the machine has cores to spare), round robin.
    local jobs=${GPU_CHECK_JOBS:-6} groups=() i n count=0
    for ((i = 0; i < jobs; i++)); do groups+=(""); done
    i=0
    for n in ${learners//,/ }; do
        count=$((count + 1))
        groups[$((i % jobs))]+="${groups[$((i % jobs))]:+,}$n"
        i=$((i + 1))
    done
    local lim pids=() g
    lim=$(budget 110)
    if [ "$lim" -gt 0 ]; then
        echo "-- gradients (limit ${lim} s, up to $jobs processes): $learners"
        for ((i = 0; i < jobs; i++)); do
            g=${groups[$i]}
            [ -z "$g" ] && continue
            timeout --kill-after=5 "$lim" "$PY" benchmarks/gpu_grads.py --device "$DEV" --learners "$g" \
                --json "$RESDIR/gpu_grads_$i.json" >"$RESDIR/gpu_grads_$i.log" 2>&1 &
            pids+=($!)
        done
        for i in "${pids[@]}"; do wait "$i"; done
        cat "$RESDIR"/gpu_grads_*.log 2>/dev/null | grep -E '^(PASS|FAIL|gpu_grads:|[A-Za-z]*Error)' || true
        local pass fail
        pass=$(cat "$RESDIR"/gpu_grads_*.log 2>/dev/null | grep -c '^PASS')
        fail=$(cat "$RESDIR"/gpu_grads_*.log 2>/dev/null | grep -c '^FAIL')
        echo "-- gradients: $pass passed, $fail failed of $((2 * count)) checks" \
            "(missing ones timed out or crashed: see $RESDIR/gpu_grads_*.log)"
    else
        echo "-- gradients: skipped (out of time)"
    fi
}

throughput_step() {
    echo
    echo "== (b) throughput"
    step "sine MAML meta-batch 25, 1 thread" 100 "$PY" benchmarks/throughput.py --device "$DEV" --threads 1 \
        --steps 1,5 --orders second --methods loop,vmap,reference,compiled --iterations 50 --repeats 3 \
        --warmup 2 --max-seconds 2 --warm-cache --json "$RESDIR/throughput.json"
    # Compile the four conv4 learners in parallel into the persistent cache, then time them one
    # after the other (their "compile s" is then mostly the load from that cache).
    local size=${GPU_CHECK_CONV4_SIZE:-84} lim pids=() n i
    lim=$(budget 100)
    if [ "$lim" -gt 0 ]; then
        echo "-- conv4 compile warm-up (limit ${lim} s, 4 processes)"
        pids=()
        for n in maml metasgd pamela cxgrad; do
            timeout --kill-after=5 "$lim" "$PY" benchmarks/learners.py --device "$DEV" --conv4 only --learners "$n" \
                --conv4-size "$size" --conv4-iterations 1 --repeats 1 --warmup 0 --warm-cache \
                >"$RESDIR/conv4_warm_$n.log" 2>&1 &
            pids+=($!)
        done
        for i in "${pids[@]}"; do wait "$i"; done
        grep -h -E '^  conv4|Error' "$RESDIR"/conv4_warm_*.log || true
    else
        echo "-- conv4 compile warm-up: skipped (out of time)"
    fi
    step "conv4 5-way 5-shot, 5 inner steps, meta-batch 4" 50 "$PY" benchmarks/learners.py --device "$DEV" \
        --conv4 only --conv4-size "$size" --conv4-iterations 10 --repeats 3 --warmup 2 --warm-cache \
        --json "$RESDIR/conv4.json"
    echo "PAMELA Table 1 (hardware unstated): MAML 205.5 ms, PAMELA 215.8 ms per task;" \
        "pamela / maml = 1.050 (compare with the 'pamela / maml' lines above: ratios, not absolute ms)"
}

packing_step() {
    echo
    echo "== (c) 4 trials packed on one GPU vs 1 alone"
    step "packing" 80 "$PY" benchmarks/gpu_pack.py --device "$DEV" --copies 4 --seconds 10 \
        --json "$RESDIR/gpu_pack.json"
}

main 2>&1 | tee "$RESULT"
exit "${PIPESTATUS[0]}"
