#!/usr/bin/env bash
# GPU checks of metatune, at most about 8 minutes in all, every step under `timeout`:
#   (a) CUDA against CPU meta-gradients, float64, every learner, eager and compiled
#       (benchmarks/gpu_grads.py; relative error < 1e-8);
#   (b) throughput: sine MAML meta-batch 25 (benchmarks/throughput.py, 1 thread, small counts)
#       and conv4 5-way 5-shot ms per task for maml, metasgd, pamela, cxgrad
#       (benchmarks/learners.py --conv4 only), next to PAMELA's Table 1;
#   (c) aggregate throughput of 4 compiled trials packed on the GPU against one alone
#       (benchmarks/gpu_pack.py).
# Without a GPU it prints "not run: no GPU available" and exits 0 (writing nothing).
#
# Compilation dominates the time on a fresh machine, so the graphs that (b) and (c) time are
# compiled first, in background processes running alongside (a) (a correctness check, which
# timing interference does not affect), into one persistent cache ($METATUNE_COMPILE_CACHE,
# default ${TMPDIR:-/tmp}/metatune-gpu-check-cache). Any warm-up still running when the timed
# steps are due is stopped, and what it had not compiled is timed eager only (said so in the
# output). The timed steps then run alone, one after the other.
#
# Output: stdout, and $OUT/gpu_check.txt if OUT is set, else
# benchmarks/gpu_results/gpu_check-<date>.txt; the JSON and logs of every step lie next to it.
# Knobs (environment): PYTHON (default .venv/bin/python if present, else python3);
# GPU_CHECK_SECONDS (total budget, default 465); GPU_CHECK_LEARNERS (step a, default all);
# GPU_CHECK_JOBS (processes of step a, default 6); GPU_CHECK_CONV4_SIZE (84);
# GPU_CHECK_STEPS (which of a, b, c, default "a b c"); GPU_CHECK_DEVICE (default cuda; "cpu" runs
# everything on the CPU to test this script's plumbing only: slow, and the figures mean nothing).
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
SIZE=${GPU_CHECK_CONV4_SIZE:-84}
CONV4=(maml metasgd pamela cxgrad)
# Seconds reserved at the end for the timed steps: (b) sine, (b) conv4, (c) packing.
T_SINE=75 T_CONV4=50 T_PACK=55
RESERVED=0
[[ $STEPS == *b* ]] && RESERVED=$((RESERVED + T_SINE + T_CONV4))
[[ $STEPS == *c* ]] && RESERVED=$((RESERVED + T_PACK))

# budget LIMIT -> min(LIMIT, seconds left), 0 when fewer than 15 are left
budget() {
    local left=$((TOTAL - SECONDS))
    if [ "$left" -lt 15 ]; then echo 0; elif [ "$1" -lt "$left" ]; then echo "$1"; else echo "$left"; fi
}

# step NAME LIMIT CMD... : run CMD under timeout, say how it ended
step() {
    local name=$1 lim t0 rc
    lim=$(budget "$2")
    shift 2
    if [ "$lim" -eq 0 ]; then
        echo "-- $name: skipped (out of time)"
        return 0
    fi
    echo "-- $name (limit ${lim} s): $*"
    t0=$SECONDS
    timeout --kill-after=5 "$lim" "$@"
    rc=$?
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "-- $name: TIMED OUT after $((SECONDS - t0)) s (what it printed above is partial)"
    else
        echo "-- $name: exit $rc after $((SECONDS - t0)) s"
    fi
}

# ------------------------------------------------------------------ compile warm-ups (background)
declare -A WARM=()  # name -> pid of its `timeout`
start_warmups() {
    local lim=$((TOTAL - RESERVED - SECONDS)) n
    [ "$lim" -lt 15 ] && return 0
    echo "-- compile warm-ups in the background (until ${lim} s from now at the latest)"
    if [[ $STEPS == *b* || $STEPS == *c* ]]; then
        # The reference's and metatune's sine steps at 1 and 5 inner steps; (c) reuses the 5-step one.
        timeout --kill-after=5 "$lim" "$PY" benchmarks/throughput.py --device "$DEV" --threads 1 --steps 1,5 \
            --orders second --methods reference,compiled --iterations 1 --repeats 1 --warmup 0 --warm-cache \
            >"$RESDIR/warm_sine.log" 2>&1 &
        WARM[sine]=$!
    fi
    if [[ $STEPS == *b* ]]; then
        for n in "${CONV4[@]}"; do
            timeout --kill-after=5 "$lim" "$PY" benchmarks/learners.py --device "$DEV" --conv4 only --learners "$n" \
                --conv4-size "$SIZE" --conv4-iterations 1 --repeats 1 --warmup 0 --warm-cache \
                >"$RESDIR/warm_conv4_$n.log" 2>&1 &
            WARM[$n]=$!
        done
    fi
}

# Wait for the warm-ups until the timed steps are due, then stop what is left; sets WARM_OK.
declare -A WARM_OK=()
finish_warmups() {
    local n rc
    while [ $((TOTAL - RESERVED - SECONDS)) -gt 0 ]; do
        local alive=0
        for n in "${!WARM[@]}"; do kill -0 "${WARM[$n]}" 2>/dev/null && alive=1; done
        [ "$alive" -eq 0 ] && break
        sleep 1
    done
    for n in "${!WARM[@]}"; do
        if kill -0 "${WARM[$n]}" 2>/dev/null; then
            kill "${WARM[$n]}" 2>/dev/null
            wait "${WARM[$n]}" 2>/dev/null
            echo "-- compile warm-up $n: stopped unfinished at ${SECONDS} s"
        else
            wait "${WARM[$n]}"
            rc=$?
            [ "$rc" -eq 0 ] && WARM_OK[$n]=1
            echo "-- compile warm-up $n: exit $rc"
        fi
    done
}

# ------------------------------------------------------------------ (a)
grads_step() {
    echo
    echo "== (a) CUDA vs CPU meta-gradients, float64, every learner, eager and compiled"
    rm -f "$RESDIR"/gpu_grads_*.log "$RESDIR"/gpu_grads_*.json
    local learners jobs=${GPU_CHECK_JOBS:-6} groups=() i n count=0 lim pids=() pass fail
    learners=${GPU_CHECK_LEARNERS:-$(timeout 60 "$PY" benchmarks/gpu_grads.py --list 2>/dev/null | tail -n 1)}
    for ((i = 0; i < jobs; i++)); do groups+=(""); done
    i=0
    for n in ${learners//,/ }; do  # round robin over the processes
        count=$((count + 1))
        groups[$((i % jobs))]+="${groups[$((i % jobs))]:+,}$n"
        i=$((i + 1))
    done
    lim=$(budget $((TOTAL - RESERVED - SECONDS > 110 ? 110 : TOTAL - RESERVED - SECONDS)))
    if [ "$lim" -le 0 ]; then
        echo "-- gradients: skipped (out of time)"
        return 0
    fi
    echo "-- gradients (limit ${lim} s, up to $jobs processes): $learners"
    for ((i = 0; i < jobs; i++)); do
        [ -z "${groups[$i]}" ] && continue
        timeout --kill-after=5 "$lim" "$PY" benchmarks/gpu_grads.py --device "$DEV" --learners "${groups[$i]}" \
            --json "$RESDIR/gpu_grads_$i.json" >"$RESDIR/gpu_grads_$i.log" 2>&1 &
        pids+=($!)
    done
    for i in "${pids[@]}"; do wait "$i"; done
    cat "$RESDIR"/gpu_grads_*.log 2>/dev/null | grep -E '^(PASS|FAIL)|Error' || true
    pass=$(cat "$RESDIR"/gpu_grads_*.log 2>/dev/null | grep -c '^PASS')
    fail=$(cat "$RESDIR"/gpu_grads_*.log 2>/dev/null | grep -c '^FAIL')
    echo "-- gradients: $pass passed, $fail failed of $((2 * count)) checks" \
        "(any missing timed out or crashed: see $RESDIR/gpu_grads_*.log)"
}

# ------------------------------------------------------------------ (b)
throughput_step() {
    echo
    echo "== (b) throughput"
    local methods=loop,vmap,reference,compiled
    [ -z "${WARM_OK[sine]:-}" ] && methods=loop,vmap && echo "-- sine: compile warm-up unfinished: eager methods only"
    step "sine MAML meta-batch 25, 1 thread" "$T_SINE" "$PY" benchmarks/throughput.py --device "$DEV" --threads 1 \
        --steps 1,5 --orders second --methods "$methods" --iterations 50 --repeats 3 --warmup 2 --max-seconds 2 \
        --warm-cache --json "$RESDIR/throughput.json"
    local eager_only="" n
    for n in "${CONV4[@]}"; do
        [ -z "${WARM_OK[$n]:-}" ] && eager_only+="${eager_only:+,}$n"
    done
    [ -n "$eager_only" ] && echo "-- conv4: compile warm-up unfinished for $eager_only: eager only"
    step "conv4 5-way 5-shot, 5 inner steps, meta-batch 4" "$T_CONV4" "$PY" benchmarks/learners.py --device "$DEV" \
        --conv4 only --conv4-size "$SIZE" --conv4-iterations 10 --repeats 3 --warmup 2 --warm-cache \
        --eager-only "$eager_only" --json "$RESDIR/conv4.json"
    echo "PAMELA Table 1 (hardware unstated): MAML 205.5 ms, PAMELA 215.8 ms per task, pamela / maml = 1.050;" \
        "compare the 'pamela / maml' ratios above, not the absolute ms"
}

# ------------------------------------------------------------------ (c)
packing_step() {
    echo
    echo "== (c) 4 trials packed on one GPU vs 1 alone"
    [ -z "${WARM_OK[sine]:-}" ] && echo "-- packing: sine warm-up unfinished: the trials compile first (limit may hit)"
    step "packing" "$T_PACK" "$PY" benchmarks/gpu_pack.py --device "$DEV" --copies 4 --seconds 10 \
        --ready-timeout 30 --json "$RESDIR/gpu_pack.json"
}

main() {
    echo "# metatune gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname) | device $DEV | budget ${TOTAL} s" \
        "| compile cache $METATUNE_COMPILE_CACHE"
    "$PY" -c 'import torch; print(f"# torch {torch.__version__}, CUDA {torch.version.cuda}, " +
              (torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"))'
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    rm -f "$RESDIR"/warm_*.log
    start_warmups
    [[ $STEPS == *a* ]] && grads_step
    finish_warmups
    [[ $STEPS == *b* ]] && throughput_step
    [[ $STEPS == *c* ]] && packing_step
    echo
    echo "# gpu_check done in ${SECONDS} s; results: $RESULT"
}

main 2>&1 | tee "$RESULT"
exit "${PIPESTATUS[0]}"
