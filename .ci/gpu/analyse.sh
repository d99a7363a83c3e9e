#!/usr/bin/env bash
# Read what .ci/gpu/on-gpu.sh brought back from the GPU machine (run here, afterwards).
#
# Usage: .ci/gpu/analyse.sh DIR [UNPACK_DIR]
#   DIR         the files from $OUT (summary.txt, results.tar.xz, saved.tar.xz, ...)
#   UNPACK_DIR  where to unpack them (default DIR-unpacked, or a temporary folder when DIR is
#               read-only)
# Prints: the run log, GPU facts from the headers, recording times GPU vs CPU, and for every
# comparison its verdict, source layer, latent error growth and final-image PSNR/SSIM; then
# re-judges the saved comparisons with this checkout's sdtrace ($SDTRACE, or `cargo run
# --release`) so tolerances can be varied here: `sdtrace report --from X.cmp.json --tol ...`.
set -uo pipefail
DIR="${1:?usage: $0 DIR [UNPACK_DIR]}"
U="${2:-${DIR%/}-unpacked}"
mkdir -p "$U" 2>/dev/null && [ -w "$U" ] || U="$(mktemp -d /tmp/sdtrace-gpu-results.XXXXXX)"
for a in "$DIR"/*.tar.xz; do
  [ -f "$a" ] && python3 -c "import sys,tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" "$a" "$U"
done
echo "== unpacked into $U"
[ -f "$DIR/summary.txt" ] && { echo "== summary.txt"; cat "$DIR/summary.txt"; }

python3 - "$U" <<'EOF'
import json, os, re, statistics, sys
u = sys.argv[1]
rep = os.path.join(u, "reports")

def load(p):
    try:
        with open(p) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

# Recording times: the last row per name wins (a rerun appends).
rows = {}
tsv = os.path.join(u, "timings.tsv")
if os.path.exists(tsv):
    with open(tsv) as f:
        head = f.readline().rstrip("\n").split("\t")
        for line in f:
            r = dict(zip(head, line.rstrip("\n").split("\t")))
            rows[r["name"]] = r

def step_times(name):
    """Seconds per sampler step from the record log (the first step includes warm-up)."""
    p = os.path.join(u, "logs", name + ".log")
    if not os.path.exists(p):
        return []
    with open(p) as f:
        return [float(m.group(1)) for m in re.finditer(r"^step \d+/\d+ ([0-9.]+) s", f.read(), re.M)]

print("\n== GPU facts (from the first GPU trace's header)")
for name in sorted(rows):
    info = load(os.path.join(rep, name + ".info.json"))
    if not info:
        continue
    h = info.get("header", info)
    dev = h.get("device", {})
    if dev.get("gpu"):
        print(json.dumps(dev["gpu"], indent=2))
        print("cublas:", json.dumps(h.get("settings", {}).get("cublas")))
        break
else:
    print("(no GPU facts: no GPU trace came back)")

print("\n== recordings (wall: the process; run: the recording as the trace's run end says, from loading")
print("   to the decoded image; step: median seconds per sampler step after the first)")
print(f"{'name':28} {'device':7} {'dtype':5} {'size':8} {'rc':>4} {'wall s':>8} {'run s':>8} {'step s':>8} {'status'}")
for name, r in sorted(rows.items()):
    st = step_times(name)
    med = statistics.median(st[1:]) if len(st) > 1 else (st[0] if st else float("nan"))
    info = load(os.path.join(rep, name + ".info.json")) or {}
    end = info.get("end") or info.get("run_end") or {}
    end = end if isinstance(end, dict) else {}
    run_s = end.get("elapsed_ms", float("nan") * 1000) / 1000
    print(f"{name:28} {r['device']:7} {r['dtype']:5} {r['size']:8} {r['rc']:>4} {r['wall_s']:>8} {run_s:8.1f} {med:8.3f} {end.get('status', '')}")

print("\n== speed: CPU wall / GPU wall (same model, size, dtype)")
for name, r in sorted(rows.items()):
    if not name.endswith("-cpu"):
        continue
    g = rows.get(name[: -len("-cpu")] + "-gpu-1")
    try:
        print(f"{name[:-4]:22} cpu {float(r['wall_s']):8.1f} s  gpu {float(g['wall_s']):8.1f} s  ratio {float(r['wall_s']) / float(g['wall_s']):7.1f}")
    except (TypeError, ValueError, ZeroDivisionError):
        print(f"{name[:-4]:22} (incomplete)")

print("\n== comparisons (A = reference, B = under test)")
for f in sorted(os.listdir(rep)) if os.path.isdir(rep) else []:
    if not f.endswith(".json") or f.endswith(".cmp.json") or f.endswith(".info.json"):
        continue
    j = load(os.path.join(rep, f))
    if not j:
        continue
    v, loc, c = j.get("verdict", {}), j.get("localisation", {}), j.get("counts", {})
    print(f"-- {f[:-5]}: {v.get('class')} (exit {v.get('exit_code')})")
    print(f"   {v.get('summary', '')}")
    print(f"   counts {c}")
    print(f"   first non-identical: {loc.get('first_non_identical')}; first over tolerance: {loc.get('first_over_tolerance')}")
    src = loc.get("source")
    if src:
        print(f"   source: {src.get('label') or src.get('key')} error {src.get('error')} (input error {src.get('error_in')})")
    amp = loc.get("amplification")
    if amp:
        print(f"   latent error growth: x{amp.get('rate_per_step')} per step from step {amp.get('onset_step')} (R² {amp.get('r2')})")
    lat = loc.get("latent") or []
    if lat:
        print("   latent error by step: " + ", ".join(f"{p.get('step')}:{p.get('error'):.2e}" if isinstance(p.get('error'), (int, float)) else f"{p.get('step')}:{p.get('error')}" for p in lat))
    img = loc.get("image")
    if img:
        m = img.get("metrics") or {}
        print(f"   final image: bit-identical {img.get('bit_identical')}, rel L2 {img.get('rel_l2')}, PSNR {m.get('psnr_db')} dB, SSIM {m.get('ssim')}")
EOF

# Re-judge the saved comparisons with this checkout's sdtrace (they need no traces).
SDTRACE="${SDTRACE:-}"
if [ -z "$SDTRACE" ]; then
  SDTRACE="cargo run --quiet --release --"
fi
shopt -s nullglob
saved=("$U"/reports/*.cmp.json)
if [ ${#saved[@]} -gt 0 ]; then
  echo
  echo "== re-judged here from the saved comparisons ($SDTRACE report --from ...)"
  for s in "${saved[@]}"; do
    echo "-- $(basename "$s" .cmp.json)"
    $SDTRACE report --from "$s" | sed -n 2p || true  # exit 1 = diverges, which is a result
  done
fi
exit 0
