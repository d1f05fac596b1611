#!/usr/bin/env bash
# Integration test of the SLURM profile on a real single-node SLURM cluster started on this machine.
#
# Run from the repository root, as root, on a Debian machine where `make test` already built .venv:
#   bash .ci/slurm-test.sh
# It installs slurmctld/slurmd/munge if missing, writes /etc/slurm/slurm.conf + gres.conf for one node
# (this host, 2 fake GPUs), starts munged/slurmctld/slurmd, and then runs snakemake through sbatch with
# a test profile derived from slurm/config.yaml (same GPU assignment and attempt-scaled resources,
# memory shrunk to fit the node):
#   phase 1  plumbing: tests/workflow/slurm/plumbing/Snakefile (localrule, CPU rule, GPU rule that fails once
#            and is retried with doubled memory) -- proves cluster + profile + resources.
#   phase 2  the real workflow with config/tiny.yaml, `all` target.
#   phase 3  ddp: one M-step of phase 2 again (digits iteration 1) with mstep.gpus: 2, i.e. torchrun with 2
#            processes (gloo on the CPU) in one job of 2 GPUs and 2 x cpus_per_gpu CPUs; its model.pt
#            is compared with phase 2's 1-GPU one (phase 2's outputs are built first if it did not run).
# What SLURM ran is read back from slurmctld (`scontrol -o show job`; MinJobAge keeps finished jobs) and
# compared with snakemake's dry-run plan. Daemons are always stopped by PID on exit; a pre-existing
# /etc/slurm/{slurm,gres}.conf is restored.
#
# Environment knobs:
#   SLURM_TEST_PHASES="plumbing real ddp"  which phases to run
#   SLURM_TEST_VENV=<repo>/.venv        venv whose bin/ goes first on PATH (jobs inherit PATH)
#   SLURM_TEST_CONFIG=config/tiny.yaml  config for phase 2
#   SLURM_TEST_TIMEOUT=900              seconds allowed per snakemake run (then SIGINT: jobs are cancelled)
#   SLURM_TEST_KEEP=1                   keep the work directory (logs, outputs) for inspection
set -euo pipefail

REPO=$(pwd)
[[ -f "$REPO/slurm/config.yaml" ]] || { echo "slurm-test: run me from the repo root (no slurm/config.yaml in $REPO)" >&2; exit 2; }
PHASES=${SLURM_TEST_PHASES:-"plumbing real ddp"}
VENV=${SLURM_TEST_VENV:-$REPO/.venv}
TINY=${SLURM_TEST_CONFIG:-config/tiny.yaml}
RUN_TIMEOUT=${SLURM_TEST_TIMEOUT:-900}
[[ -x "$VENV/bin/python" ]] || { echo "slurm-test: no venv at $VENV (run make test first)" >&2; exit 2; }
export PATH="$VENV/bin:$PATH" VIRTUAL_ENV="$VENV"
PY="$VENV/bin/python"
TOOLS="$REPO/tests/workflow/slurm/slurm_test_tools.py"
WORK=$(mktemp -d /tmp/emprior-slurm-test.XXXXXX)
PASSED=0
FAILED=0
T0=$SECONDS

say() { echo "slurm-test: $*"; }
pass() { PASSED=$((PASSED + 1)); echo "PASS $*"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL $*"; }
# Count the PASS/FAIL lines printed by the python checker.
tally() {
    local line
    while IFS= read -r line; do
        case "$line" in
            PASS\ *) pass "${line#PASS }" ;;
            FAIL\ *) fail "${line#FAIL }" ;;
            *) echo "$line" ;;
        esac
    done
}

# --- cleanup: stop what we started, by PID, and put /etc/slurm back -------------------------------
STARTED_PIDFILES=()
cleanup() {
    local rc=$? pf pid
    set +e
    if command -v scancel >/dev/null && [[ -f "$WORK/slurmctld.pid" ]]; then
        scancel --user=root >/dev/null 2>&1
    fi
    # Reverse start order: slurmd, slurmctld, munged.
    for ((i = ${#STARTED_PIDFILES[@]} - 1; i >= 0; i--)); do
        pf=${STARTED_PIDFILES[$i]}
        [[ -s "$pf" ]] || continue
        pid=$(cat "$pf")
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid"
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        fi
    done
    for f in slurm.conf gres.conf; do
        if [[ -f "$WORK/etc-backup/$f" ]]; then cp -p "$WORK/etc-backup/$f" "/etc/slurm/$f";
        elif [[ -f "$WORK/etc-written-$f" ]]; then rm -f "/etc/slurm/$f"; fi
    done
    if [[ $rc -ne 0 || $FAILED -ne 0 ]]; then
        for log in slurmctld.log slurmd.log; do
            [[ -f "$WORK/$log" ]] && { echo "---- tail $log"; tail -n 30 "$WORK/$log"; }
        done
    fi
    if [[ -n "${SLURM_TEST_KEEP:-}" || $rc -ne 0 || $FAILED -ne 0 ]]; then
        say "work directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    [[ $rc -ne 0 && $FAILED -eq 0 ]] && FAILED=1   # an abort counts as a failure
    say "$PASSED passed, $FAILED failed"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. packages -------------------------------------------------------------------------------------
t=$SECONDS
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
    || ! command -v munged >/dev/null; then
    say "installing slurmctld slurmd slurm-client munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi
INSTALL_S=$((SECONDS - t))
say "packages ready in ${INSTALL_S}s ($(slurmctld -V))"

# --- 2. cluster configuration ----------------------------------------------------------------------
t=$SECONDS
HOST=$(hostname -s)
NCPU=$(nproc)
# Leave headroom below the physical memory, or slurmd reports "Low RealMemory" and the node drains.
MEM_MB=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
mkdir -p /etc/slurm "$WORK/etc-backup" "$WORK/ctld" "$WORK/slurmd" "$WORK/gpu" /run/munge
for f in slurm.conf gres.conf; do
    if [[ -f "/etc/slurm/$f" ]]; then cp -p "/etc/slurm/$f" "$WORK/etc-backup/$f"; else touch "$WORK/etc-written-$f"; fi
done
# Fake GPU device files: enough for gres accounting; CUDA_VISIBLE_DEVICES stays unset in jobs.
touch "$WORK/gpu/fakegpu0" "$WORK/gpu/fakegpu1"
cat > /etc/slurm/slurm.conf <<EOF
# Written by .ci/slurm-test.sh (restored/removed on exit).
ClusterName=emprior-ci
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$WORK/ctld
SlurmdSpoolDir=$WORK/slurmd
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
SlurmctldLogFile=$WORK/slurmctld.log
SlurmdLogFile=$WORK/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
# Finished jobs stay visible to squeue/scontrol for an hour: snakemake's squeue status checks and
# this script's final audit both rely on it (there is no accounting database).
MinJobAge=3600
GresTypes=gpu
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$NCPU RealMemory=$MEM_MB Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
cat > /etc/slurm/gres.conf <<EOF
NodeName=$HOST Name=gpu File=$WORK/gpu/fakegpu[0-1]
EOF

# --- 3. daemons ------------------------------------------------------------------------------------
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "munged already running; reusing it"
else
    [[ -s /etc/munge/munge.key ]] || { mkdir -p /etc/munge; dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; }
    chown -R munge:munge /etc/munge 2>/dev/null || true
    chmod 0400 /etc/munge/munge.key
    STARTED_PIDFILES+=("$WORK/munged.pid")
    munged --force --pid-file="$WORK/munged.pid" --log-file="$WORK/munged.log"
fi
STARTED_PIDFILES+=("$WORK/slurmctld.pid")
slurmctld   # state lives in $WORK: a fresh cluster every run
STARTED_PIDFILES+=("$WORK/slurmd.pid")
slurmd
state=""
for _ in $(seq 120); do
    state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null || true)
    [[ "$state" == idle ]] && break
    sleep 1
done
CLUSTER_S=$((SECONDS - t))
if [[ "$state" == idle ]]; then
    pass "cluster up: node $HOST idle (${NCPU} CPUs, ${MEM_MB} MB, gpu:2) after ${CLUSTER_S}s"
else
    fail "cluster up: node $HOST state '${state}' after ${CLUSTER_S}s"
    sinfo -N -l || true
    exit 1
fi

# A GPU job straight through sbatch, independent of snakemake.
jid=$(sbatch --parsable --gpus=1 -p debug -t 1 --mem 10 -o "$WORK/probe.out" --wrap 'echo gpus=$SLURM_GPUS_ON_NODE')
for _ in $(seq 60); do
    [[ "$(squeue -h -j "$jid" -o %T 2>/dev/null)" == COMPLETED ]] && break
    sleep 0.5
done
if grep -q '^gpus=1$' "$WORK/probe.out" 2>/dev/null; then pass "sbatch --gpus=1 probe job $jid"; else
    fail "sbatch --gpus=1 probe job $jid: $(cat "$WORK/probe.out" 2>/dev/null)"; fi

# --- 4. the shipped profile as users call it (paper scale, dry run: plans, submits nothing) -----------
if [[ " $PHASES " == *" real "* && -f "$REPO/Snakefile" ]]; then
    if (cd "$REPO" && snakemake --profile slurm --nocolor -n all >"$WORK/paper.plan.log" 2>&1); then
        pass "snakemake --profile slurm -n all (config/paper.yaml): $(grep -cE '^rule ' "$WORK/paper.plan.log") jobs planned"
    else
        fail "snakemake --profile slurm -n all failed (see $WORK/paper.plan.log)"; tail -n 20 "$WORK/paper.plan.log"
    fi
fi

# --- 5. test profile ---------------------------------------------------------------------------------
"$PY" "$TOOLS" make-profile --src "$REPO/slurm/config.yaml" --dst "$WORK/profile/slurm" \
    --node-mem-mb "$MEM_MB" --partition debug --logdir "$WORK/slurm_logs" >"$WORK/profile-meta.json"
# (each phase passes its own --slurm-logdir, so its logs can be counted against its jobs)
say "test profile: $WORK/profile/slurm/config.yaml (mem scale $(cat "$WORK/profile-meta.json"))"

# run_phase NAME MODE SNAKEFILE CONFIG WORKDIR LOCALRULES: dry-run plan, run through SLURM, audit.
run_phase() {
    local name=$1 mode=$2 snakefile=$3 config=$4 workdir=$5 localrules=$6 rc=0 t1
    local args=(--profile "$WORK/profile/slurm" --snakefile "$snakefile"
        --configfiles "$config" --directory "$workdir" --slurm-logdir "$WORK/$name.slurm_logs" --nocolor)
    # The plumbing Snakefile is not the project's: keep the repo's profiles/default out of it. The real
    # workflow gets profiles/default exactly as users do.
    [[ $mode == plumbing ]] && args+=(--workflow-profile none)
    mkdir -p "$workdir"
    say "[$name] snakemake ${args[*]} all"
    if snakemake "${args[@]}" --dry-run all >"$WORK/$name.plan.log" 2>&1; then
        pass "[$name] dry run with the derived profile"
    else
        fail "[$name] dry run failed (see $WORK/$name.plan.log)"; tail -n 30 "$WORK/$name.plan.log"; return
    fi
    t1=$SECONDS
    # SIGINT on timeout: snakemake then scancels its SLURM jobs before exiting.
    timeout --signal=INT --kill-after=60 "$RUN_TIMEOUT" snakemake "${args[@]}" all >"$WORK/$name.run.log" 2>&1 || rc=$?
    eval "RUN_S_$name=$((SECONDS - t1))"
    if [[ $rc -eq 0 ]]; then pass "[$name] snakemake through SLURM exited 0 in $((SECONDS - t1))s"
    elif [[ $rc -eq 124 ]]; then fail "[$name] snakemake timed out after ${RUN_TIMEOUT}s"; tail -n 40 "$WORK/$name.run.log"
    else
        fail "[$name] snakemake exited $rc after $((SECONDS - t1))s (see $WORK/$name.run.log)"
        tail -n 40 "$WORK/$name.run.log"
    fi
    if snakemake "${args[@]}" --dry-run all 2>&1 | grep -q "Nothing to be done"; then
        pass "[$name] all outputs present and up to date afterwards"
    else fail "[$name] a second dry run still has jobs to do"; fi
    audit_phase "$name" "$mode" "$workdir" "$localrules"
}

# audit_phase NAME MODE WORKDIR LOCALRULES [CHECKER ARGS]: what slurmctld ran for the phase's snakemake
# run vs its dry-run plan ($WORK/NAME.plan.log, .run.log, .slurm_logs).
audit_phase() {
    local name=$1 mode=$2 workdir=$3 localrules=$4
    shift 4
    scontrol -o show job >"$WORK/$name.jobs.txt" 2>/dev/null || true
    # Only this run's jobs: the plugin submits every job with --job-name <SLURM run ID>.
    local uuid
    uuid=$(sed -n 's/^SLURM run ID: \([0-9a-f-]*\).*/\1/p' "$WORK/$name.run.log" | head -n1)
    if [[ -n "$uuid" ]]; then
        grep -F " JobName=$uuid " "$WORK/$name.jobs.txt" >"$WORK/$name.jobs.mine.txt" || true
    else
        fail "[$name] no 'SLURM run ID' in the snakemake log"; : >"$WORK/$name.jobs.mine.txt"
    fi
    "$PY" "$TOOLS" check --profile-dir "$WORK/profile/slurm" --plan "$WORK/$name.plan.log" \
        --run-log "$WORK/$name.run.log" --expect-local "$localrules" \
        --jobs "$WORK/$name.jobs.mine.txt" --logdir "$WORK/$name.slurm_logs" --workdir "$workdir" \
        --venv "$VENV" --mode "$mode" "$@" >"$WORK/$name.check.txt" || fail "[$name] checker crashed"
    tally < <(sed "s/^\(PASS\|FAIL\) /\1 [$name] /" "$WORK/$name.check.txt")
}

# run_ddp_phase WORKDIR LOCALRULES: phase 3 (see the top). The other rules' outputs come from phase 2
# (--rerun-triggers mtime: the overlay config changes every job's config digest, not their inputs).
run_ddp_phase() {
    local workdir=$1 localrules=$2 name=ddp rc=0 t1 t0=$SECONDS
    local target=results-tiny/digits/diem_tweedie/iter_001/model.pt
    local args=(--profile "$WORK/profile/slurm" --snakefile "$REPO/Snakefile" --directory "$workdir" --nocolor)
    mkdir -p "$WORK/ddp"
    if [[ ! -f "$workdir/$target" ]]; then
        say "[ddp] building phase 2's 1-GPU $target first"
        timeout --signal=INT --kill-after=60 "$RUN_TIMEOUT" snakemake "${args[@]}" --configfiles "$REPO/$TINY" \
            --slurm-logdir "$WORK/ddp-reference.slurm_logs" "$target" >"$WORK/ddp-reference.run.log" 2>&1 \
            || { fail "[ddp] building the 1-GPU $target failed (see $WORK/ddp-reference.run.log)"; return; }
    fi
    cp -p "$workdir/$target" "$WORK/ddp/model.1gpu.pt"
    cp -p "$workdir/$target.prov.json" "$WORK/ddp/model.1gpu.pt.prov.json"  # its checksum sidecar
    printf 'device: cpu\nexperiments:\n  digits:\n    mstep: {gpus: 2}\n' >"$WORK/ddp/gpus2.yaml"
    args+=(--configfiles "$REPO/$TINY" "$WORK/ddp/gpus2.yaml" --slurm-logdir "$WORK/$name.slurm_logs"
        --rerun-triggers=mtime --forcerun="$target")  # `=`: these options take lists
    say "[$name] snakemake ${args[*]} $target"
    if snakemake "${args[@]}" --dry-run "$target" >"$WORK/$name.plan.log" 2>&1; then
        pass "[$name] dry run with mstep.gpus: 2"
    else
        fail "[$name] dry run failed (see $WORK/$name.plan.log)"; tail -n 30 "$WORK/$name.plan.log"; return
    fi
    t1=$SECONDS
    timeout --signal=INT --kill-after=60 "$RUN_TIMEOUT" snakemake "${args[@]}" "$target" >"$WORK/$name.run.log" 2>&1 || rc=$?
    RUN_S_ddp=$((SECONDS - t1))
    if [[ $rc -eq 0 ]]; then pass "[$name] snakemake through SLURM exited 0 in ${RUN_S_ddp}s"
    else fail "[$name] snakemake exited $rc after ${RUN_S_ddp}s (see $WORK/$name.run.log)"; tail -n 40 "$WORK/$name.run.log"; fi
    audit_phase "$name" ddp "$workdir" "$localrules" --target "$workdir/$target" \
        --reference "$WORK/ddp/model.1gpu.pt" --repo "$REPO"
    PHASE_S_ddp=$((SECONDS - t0))
}

for phase in $PHASES; do
    case $phase in
        plumbing)
            run_phase plumbing plumbing "$REPO/tests/workflow/slurm/plumbing/Snakefile" \
                "$REPO/tests/workflow/slurm/plumbing/config.yaml" "$WORK/plumbing" dataset,all ;;
        real)
            if [[ -f "$REPO/Snakefile" && -f "$REPO/$TINY" ]]; then
                # Rules the workflow declares local (login node); all others must go through sbatch.
                localrules=$(sed -n 's/^localrules:[[:space:]]*//p' "$REPO/Snakefile" "$REPO"/rules/*.smk \
                    | tr -d ' ' | paste -sd, -)
                run_phase real real "$REPO/Snakefile" "$REPO/$TINY" "$WORK/real" "$localrules"
            else
                fail "[real] workflow missing: need $REPO/Snakefile and $REPO/$TINY"
            fi ;;
        ddp)
            localrules=$(sed -n 's/^localrules:[[:space:]]*//p' "$REPO/Snakefile" "$REPO"/rules/*.smk \
                | tr -d ' ' | paste -sd, -)
            run_ddp_phase "$WORK/real" "$localrules" ;;
        *) fail "unknown phase '$phase'" ;;
    esac
done

say "timings: install ${INSTALL_S}s, cluster start ${CLUSTER_S}s, plumbing run ${RUN_S_plumbing:-n/a}s, real run ${RUN_S_real:-n/a}s, ddp run ${RUN_S_ddp:-n/a}s (phase ${PHASE_S_ddp:-n/a}s), total $((SECONDS - T0))s"
[[ $FAILED -eq 0 ]]   # the summary line is printed last, by cleanup
