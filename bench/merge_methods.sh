#!/usr/bin/env bash
# End-to-end time and peak RSS of `darkroom merge` (additive vs guided) on the 12-MP photo:
# split at 1024x1024, a tone + saturation edit of the proxy (PIL), delta --refine, then
# five merges with each method. Prints the median wall time and peak RSS of each.
#   bench/merge_methods.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
bin=$PWD/target/release/darkroom
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp ../shared/testdata/photo_bus_4032x3024_p3.jpg "$work/bus.jpg"
cd "$work"
"$bin" -q split bus.jpg 1024 1024 >/dev/null
"$OLDPWD/.venv/bin/python" - <<'PY'
from PIL import Image, ImageEnhance
im = Image.open("bus_proxy.png").convert("RGB")
im = ImageEnhance.Contrast(ImageEnhance.Color(im).enhance(1.4)).enhance(1.25)
im.save("bus_processed.png")
PY
"$bin" -q delta bus.jpg bus_processed.png 1024 1024 --refine >/dev/null
for method in additive guided; do
  for _ in $(seq "$runs"); do
    /usr/bin/time -f "%e %M" -a -o "times_$method" "$bin" -q merge bus.jpg bus_proxy_delta.png \
      --refined-delta-image bus_proxy_delta_refined.png --method "$method" -o "out_$method.png" --overwrite >/dev/null
  done
  sort -n "times_$method" | awk -v m="$method" '{t[NR]=$1; r[NR]=$2} END {
    printf "%-8s median %.2f s  peak RSS %.0f MiB  (%d runs)\n", m, t[int((NR+1)/2)], r[int((NR+1)/2)]/1024, NR }'
done
