# Shared by the benchmarks that start Python (source it after scripts/lib.sh): a multi-layer
# Debian-like userland with a Python interpreter (≥ 500 MB compressed) built from this
# machine's /usr, the command they start, and the floor a lazy start cannot go below.

# The command: start Python and import a few modules of its standard library.
PY_CMD=(/usr/bin/python3 -c 'import json, decimal, email.parser, urllib.parse; print(json.dumps({"python": "ok"}))')
# What it prints.
PY_EXPECTED='{"python": "ok"}'

# build_python_image: sets PY_LAYERS (gzip layers, with their diff_ids) and PY_COMPRESSED
# (their bytes).
build_python_image() {
  echo "building the image's layers from /usr ..."
  local root=$BENCH_TMP/pyroot
  mkdir -p "$root"/{etc,tmp,root,proc,sys,dev,usr/lib64}
  for d in bin lib sbin; do ln -s "usr/$d" "$root/$d"; done
  ln -s usr/lib64 "$root/lib64"
  cp -P /usr/lib64/ld-linux-x86-64.so.2 "$root/usr/lib64/"
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n' > "$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
  printf 'ID=clip-bench\n' > "$root/etc/os-release"
  chmod 1777 "$root/tmp"
  tar -C "$root" --numeric-owner --owner=0 --group=0 -cf "$BENCH_TMP/py0.tar.gz.tar" .
  tar_to_layer "$BENCH_TMP/py0.tar.gz"
  make_layer "$BENCH_TMP/py1.tar.gz" usr/lib/x86_64-linux-gnu
  make_layer "$BENCH_TMP/py2.tar.gz" usr/bin usr/sbin usr/lib/python3 'usr/lib/python3.*'
  make_layer "$BENCH_TMP/py3.tar.gz" usr/share
  PY_LAYERS=("$BENCH_TMP"/py0.tar.gz "$BENCH_TMP"/py1.tar.gz "$BENCH_TMP"/py2.tar.gz "$BENCH_TMP"/py3.tar.gz)
  PY_COMPRESSED=0
  local l
  for l in "${PY_LAYERS[@]}"; do PY_COMPRESSED=$((PY_COMPRESSED + $(stat -c %s "$l"))); done
  echo "image: ${#PY_LAYERS[@]} layers, $PY_COMPRESSED bytes compressed"
}

# push_python_image [ADDR]: builds the image, starts the registry (start_registry ADDR) and
# pushes it as bench/py:latest; sets PY_LAYER_DIGESTS (the layers' hex digests joined by `|`,
# a pattern for the registry's access log).
push_python_image() {
  build_python_image
  start_registry "$@"
  push_image bench/py:latest "${PY_LAYERS[@]}"
  PY_LAYER_DIGESTS=$(for l in "${PY_LAYERS[@]}"; do sha256sum "$l" | cut -d' ' -f1; done | paste -sd'|')
}

# bundle_for ROOTFS_BUNDLE_DIR: points an `umoci unpack` bundle's config.json at PY_CMD.
bundle_for() {
  jq --argjson args "$(printf '%s\n' "${PY_CMD[@]}" | jq -R . | jq -s .)" \
    '.process.terminal=false | .process.args=$args | .root.readonly=false' \
    "$1/config.json" > "$1/config.tmp"
  mv "$1/config.tmp" "$1/config.json"
}

# start_floor BUNDLE: the file-granular floor of PY_CMD's start, from an strace of it run with
# runc on the unpacked tree: the files it opened or executed (each once), their bytes and their
# bytes gzip-compressed one by one. Sets FLOOR_FILES, FLOOR_BYTES, FLOOR_GZIP.
start_floor() {
  local bundle=$1 trace=$BENCH_TMP/start.strace
  strace -f -qq -e trace=openat,open,execve -e signal=none -o "$trace" \
    runc run --bundle "$bundle" "clip-floor-$$" >/dev/null </dev/null
  python3 - "$trace" "$bundle/rootfs" "${PY_CMD[0]}" > "$BENCH_TMP/floor" <<'PY'
import gzip, os, re, sys
trace, root, exe = sys.argv[1], sys.argv[2], sys.argv[3]
# Only the container's process, from its execve of the command on: runc's own opens are not
# the container's.
pat = re.compile(r'^(\d+) +(?:openat\([^,]+, |open\(|execve\()"([^"]+)".*\) = (\d+)')
def resolve_in(root, path, depth=0):
    """`path` inside `root` as the container sees it: symlinks resolved within the root."""
    parts, out = [p for p in path.split("/") if p not in ("", ".")], []
    while parts:
        part = parts.pop(0)
        if part == "..":
            out = out[:-1]
            continue
        here = os.path.join(root, *out, part)
        if os.path.islink(here) and depth < 40:
            target = os.readlink(here)
            out = [] if target.startswith("/") else out
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            depth += 1
            continue
        out.append(part)
    return os.path.join(root, *out)

container, seen = None, set()
for line in open(trace, errors="replace"):
    m = pat.search(line)
    if not m:
        continue
    pid, path = m.group(1), m.group(2)
    if container is None:
        if line.find("execve(") >= 0 and path == exe:
            container = pid
        else:
            continue
    if pid != container or not path.startswith("/"):
        continue
    real = resolve_in(root, path)
    if os.path.isfile(real) and not os.path.islink(real):
        seen.add(real)
files = sorted(seen)
size = sum(os.path.getsize(f) for f in files)
gz = sum(len(gzip.compress(open(f, "rb").read(), 6)) for f in files)
print(len(files), size, gz)
PY
  read -r FLOOR_FILES FLOOR_BYTES FLOOR_GZIP < "$BENCH_TMP/floor"
}
