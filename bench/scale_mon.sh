#!/bin/bash
# bench/scale_mon.sh OUT cmd...: runs cmd under /usr/bin/time -v with timestamped stderr in OUT.err,
# stdout in OUT.out, and /proc/PID/io + VmRSS sampled every 2 s in OUT.io (docs/BENCHMARKS.md "Scale").
# bench/scale_phases.py OUT turns those into the per-phase table.
# usage: mon.sh OUTPREFIX cmd...   runs cmd under /usr/bin/time -v, samples /proc/PID/io + RSS every 2 s
out=$1; shift
/usr/bin/time -v "$@" > $out.out 2> >(while IFS= read -r l; do printf '%s %s\n' "$(date +%s.%N | cut -c1-14)" "$l"; done > $out.err) &
tp=$!
sleep 0.5
pid=$(pgrep -P $tp annann | head -1)
while kill -0 $tp 2>/dev/null; do
  if [ -r /proc/$pid/io ]; then
    printf '%s %s %s\n' "$(date +%s)" "$(awk '{printf "%s=%s ", $1, $2}' /proc/$pid/io)" "$(grep VmRSS /proc/$pid/status | tr -s ' ')" >> $out.io
  fi
  sleep 2
done
wait $tp
echo "exit $?" >> $out.err
