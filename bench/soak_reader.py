"""Random reads through a clip mount, compared byte for byte with a reference tree.

    soak_reader.py MOUNT REFERENCE READERS SECONDS
    soak_reader.py MOUNT REFERENCE 0 0        (compare every file once, whole)

Prints reads, bytes, mismatches and errors; exits non-zero on any mismatch (a wrong byte is a
bug whatever else happened), and in the full comparison also on any error.
"""
import os
import random
import sys
import threading
import time


def files(root):
    out = []
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            if os.path.isfile(p) and not os.path.islink(p):
                out.append(os.path.relpath(p, root))
    return out


def main():
    mount, ref, readers, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    paths = [p for p in files(ref) if os.path.getsize(os.path.join(ref, p)) > 0]
    stats = {"reads": 0, "bytes": 0, "mismatches": 0, "errors": 0}
    lock = threading.Lock()

    def one(path, offset, length):
        try:
            with open(os.path.join(mount, path), "rb") as f:
                f.seek(offset)
                got = f.read(length)
        except OSError as e:
            with lock:
                stats["errors"] += 1
            return f"{path}: {e}"
        with open(os.path.join(ref, path), "rb") as f:
            f.seek(offset)
            want = f.read(length)
        with lock:
            stats["reads"] += 1
            stats["bytes"] += len(got)
            if got != want:
                stats["mismatches"] += 1
                print(f"MISMATCH {path} at {offset}+{length}", flush=True)
        return None

    if readers == 0:
        for p in paths:
            one(p, 0, os.path.getsize(os.path.join(ref, p)))
    else:
        deadline = time.monotonic() + seconds

        def reader(seed):
            rng = random.Random(seed)
            while time.monotonic() < deadline:
                p = rng.choice(paths)
                size = os.path.getsize(os.path.join(ref, p))
                offset = rng.randrange(size)
                one(p, offset, rng.randint(1, 256 * 1024))

        threads = [threading.Thread(target=reader, args=(i,)) for i in range(readers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    kind = "full comparison" if readers == 0 else f"{readers} readers x {seconds:g} s"
    print(f"{kind}: {stats['reads']} reads, {stats['bytes']} bytes, "
          f"{stats['mismatches']} mismatches, {stats['errors']} errors", flush=True)
    if stats["mismatches"] or (readers == 0 and stats["errors"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
