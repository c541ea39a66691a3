#!/usr/bin/env python3
"""What writing 1 GiB costs a receiver, by write path (docs/DESIGN.md, "the write path the
0.6 s per GB needs").

  bench/write-path.py FILE buffered   63,000-byte pwrites through the page cache, then fsync
  bench/write-path.py FILE direct [T] 1 MiB copied into an aligned buffer and written with
                                      O_DIRECT by T threads (default 1), then fsync

FILE is made (fallocated) and deleted; it must be on the file system to measure (O_DIRECT is
refused on tmpfs). Prints CPU seconds (user + system, this process) and wall seconds.
"""
import mmap
import os
import resource
import sys
import threading
import time

BLOCKS, BS = 1024, 1 << 20


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main():
    path, mode = sys.argv[1], sys.argv[2]
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    src = os.urandom(BS)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.posix_fallocate(fd, 0, BLOCKS * BS)
        c0, w0 = cpu(), time.time()
        if mode == "buffered":
            run = 63000
            chunks = [src[i:i + run] for i in range(0, BS, run)]
            for b in range(BLOCKS):
                for i, c in enumerate(chunks):
                    os.pwrite(fd, c, b * BS + i * run)
            os.fsync(fd)
        elif mode == "direct":
            dfd = os.open(path, os.O_RDWR | os.O_DIRECT)

            def writer(k):
                buf = mmap.mmap(-1, BS)  # page-aligned, as O_DIRECT needs
                for b in range(k, BLOCKS, threads):
                    buf[:] = src
                    os.pwrite(dfd, buf, b * BS)

            ts = [threading.Thread(target=writer, args=(k,)) for k in range(threads)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            os.fsync(dfd)
            os.close(dfd)
        else:
            sys.exit(f"unknown mode {mode!r}: buffered or direct")
        print(f"{mode} x{threads}: cpu {cpu() - c0:.3f} s, wall {time.time() - w0:.2f} s per GiB")
    finally:
        os.close(fd)
        os.unlink(path)


if __name__ == "__main__":
    main()
