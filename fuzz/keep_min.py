#!/usr/bin/env python3
"""keep_min.py <target>: refresh corpus-min/<target> from the minimised
corpus/<target> (after `cargo fuzz cmin`): at most 200 files and 1 MiB, picked
greedily by coverage. Each pick is the input adding the most libFuzzer features
not yet covered, the smaller one on ties. Each input's features are read from
the control file of a -set_cover_merge=1 run, which lists all of them (a plain
-merge=1 lists only those no smaller input had)."""
import os, shutil, subprocess, sys, tempfile

t = sys.argv[1]
os.chdir(os.path.dirname(os.path.abspath(__file__)))
binary = f"target/x86_64-unknown-linux-gnu/release/{t}"
src, dst = f"corpus/{t}", f"corpus-min/{t}"
tmp = tempfile.mkdtemp(prefix=f"keep-{t}-")
mcf = os.path.join(tmp, "control")
extra = ["-max_len=511"] if t == "keystore" else []
env = dict(os.environ, ASAN_OPTIONS="detect_odr_violation=0")
os.mkdir(os.path.join(tmp, "out"))
subprocess.run(["nice", "-n", "15", binary, "-set_cover_merge=1", f"-merge_control_file={mcf}",
                *extra, os.path.join(tmp, "out"), src],
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=True)
lines = open(mcf).read().split("\n")
n = int(lines[0])
paths = lines[2:2 + n]
feats = {}
for line in lines[2 + n:]:
    if line.startswith("FT "):
        f = line.split()
        feats[int(f[1])] = set(f[2:])
shutil.rmtree(tmp)
cand = [i for i in feats if paths[i].startswith(src)]
size = {i: os.path.getsize(paths[i]) for i in cand}
covered, chosen, total = set(), [], 0
while len(chosen) < 200:
    best, gain = None, 0
    for i in cand:
        g = len(feats[i] - covered)
        if total + size[i] <= 1 << 20 and (g > gain or (g == gain > 0 and size[i] < size[best])):
            best, gain = i, g
    if best is None:
        break
    chosen.append(best)
    covered |= feats[best]
    total += size[best]
    cand.remove(best)
everything = set().union(*feats.values()) if feats else set()
shutil.rmtree(dst, ignore_errors=True)
os.makedirs(dst)
for i in chosen:
    shutil.copy(paths[i], dst)
print(f"{t}: kept {len(chosen)} files, {total} B, of {len(size)} "
      f"({len(covered)} of {len(everything)} features)")
