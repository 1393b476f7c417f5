# Sourced by the resumable sweep jobs (species_long.sh, piano_curve.sh). limited_sweep CMD...: run a context sweep
# writing into ./sweep, its output appended to sweep.log, stopped by SIGTERM after $LIMIT seconds when LIMIT is set
# (the runs save their last step; the same command run again goes on from there); then append the call's exit code,
# its wall time and each run's progress (sweep_status.py) to status.txt, and return the sweep's exit code.
SWEEP_STATUS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/sweep_status.py   # absolute: the jobs cd into WORK
limited_sweep() {
    local start=$SECONDS code
    if [ -n "${LIMIT:-}" ]; then
        timeout -s TERM "$LIMIT" "$@" >> sweep.log 2>&1
    else
        "$@" >> sweep.log 2>&1
    fi
    code=$?
    {
        echo "$(date '+%F %T') exit $code after $((SECONDS - start)) s"
        python3 "$SWEEP_STATUS" sweep
    } | tee -a status.txt
    return $code
}
