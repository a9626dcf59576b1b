#!/usr/bin/env python3
"""Top frames of a folded-stacks file (inferno-collapse-perf output), as plain text.

    python3 flamegraphs/top.py STACKS.folded [UNIT [SAMPLES [N]]]

UNIT is what a stack's count is (`ns` of CPU for perf's cpu-clock event, `cycles`, ...);
SAMPLES the number of perf samples behind it (for the header); N how many functions to list.

Prints the share of all samples
  * per thread (perf's comm: `core-0`, `cluster-bus`, `rdk:broker1`, ...),
  * per category (a sample counts once for a category when any of its frames matches it),
  * per function on top of the stack (self time, inlined frames included as their own),
  * per function anywhere on the stack (inclusive: counted once per sample).
Frame names are shortened: Rust hashes, generic arguments and `_[k]`/`_[j]` suffixes go.
"""

import re
import sys
from collections import Counter

# Category -> regular expression on a (shortened) frame name. Order is the print order.
CATEGORIES = [
    ("kernel (any frame in the kernel)", r"_\[k\]$"),
    ("scheduler: a thread switched out and back in (finish_task_switch)", r"finish_task_switch|__schedule"),
    ("waking another thread (sock_def_readable, __wake_up, try_to_wake_up, eventfd_write, futex)",
     r"sock_def_readable|__wake_up|try_to_wake_up|eventfd_write|futex_wake"),
    ("io_uring_enter / io_uring work", r"io_uring|io_submit_sqes|io_issue_sqe"),
    ("epoll_wait", r"epoll_wait|do_epoll"),
    ("socket send (tcp_sendmsg)", r"tcp_sendmsg"),
    ("socket receive (tcp_recvmsg)", r"tcp_recvmsg"),
    ("loopback delivery (net_rx_action / __netif_receive_skb)", r"net_rx_action|__netif_receive_skb"),
    ("JSON decode (simd-json, Decoder::decode)", r"simd_json|Decoder::decode|decode_value"),
    ("JSON encode (Msg::encode / reply::*)", r"Msg::encode|Msg::frame|protocol::reply::|put_json_str"),
    ("frame parse + unmask (parse_frame, apply_mask)", r"parse_frame|apply_mask"),
    ("message assembly + UTF-8 check", r"MessageAssembler|from_utf8|run_utf8_validation"),
    ("frame encode (encode_text_with, encode_frame)", r"encode_text_with|encode_frame"),
    ("fan-out to members (Core::deliver, ConnIo::send)", r"Core::deliver|ConnIo::send|Member::offer"),
    ("room owner (RoomShard::handle, publish)", r"RoomShard::"),
    ("cross-core mailboxes (Outbox, Mailbox)", r"fanout::"),
    ("writer (write_loop, writev batch)", r"write_loop|write_batch|FrameBatch"),
    ("reader (read_loop)", r"read_loop"),
    ("cluster bus (redis, pub/sub, kafka)", r"bus::cluster|bus::redis|rdkafka|redis::"),
    ("allocation (mimalloc mi_*, malloc, free)", r"^_?mi_|mimalloc|^malloc|^free$|^__libc_malloc|^cfree|alloc::alloc"),
    ("page faults (first touch of fresh memory)", r"exc_page_fault"),
    ("memcpy / memmove", r"memcpy|memmove"),
]


def shorten(frame: str) -> str:
    frame = re.sub(r"::h[0-9a-f]{16}", "", frame)
    # Generic arguments, innermost first: `Foo<Bar<Baz>>` -> `Foo`.
    while True:
        shorter = re.sub(r"<[^<>]*>", "", frame)
        if shorter == frame:
            break
        frame = shorter
    return frame


def main() -> None:
    path = sys.argv[1]
    unit = sys.argv[2] if len(sys.argv) > 2 else "samples"
    samples = sys.argv[3] if len(sys.argv) > 3 else "?"
    top_n = int(sys.argv[4]) if len(sys.argv) > 4 else 25
    total = 0
    self_time = Counter()
    inclusive = Counter()
    categories = Counter()
    threads = Counter()
    compiled = [(name, re.compile(rx)) for name, rx in CATEGORIES]
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, count = line.rpartition(" ")
            n = int(count)
            total += n
            raw = stack.split(";")
            frames = [shorten(fr) for fr in raw]
            self_time[frames[-1]] += n
            threads[re.sub(r"\d+", "N", raw[0])] += n
            for fr in set(frames[1:]):  # frame 0 is the thread name
                inclusive[fr] += n
            for name, rx in compiled:
                if any(rx.search(fr) for fr in raw[1:]):
                    categories[name] += n
    if total == 0:
        sys.exit("no samples")

    def pct(n: int) -> str:
        return f"{100.0 * n / total:5.1f} %"

    if unit == "ns":
        weight = f"{total / 1e6:.0f} ms of CPU"
    else:
        weight = f"{total} {unit}"
    print(f"{weight} in {samples} samples ({path.rsplit('/', 1)[-1]}); shares of that total")
    print()
    print("threads (by name, numbers as N)")
    for name, n in threads.most_common():
        print(f"  {pct(n)}  {name}")
    print()
    print("categories (a sample counts once per category; categories overlap)")
    for name, _ in CATEGORIES:
        print(f"  {pct(categories[name])}  {name}")
    print()
    print(f"top {top_n} self (function on top of the stack)")
    for fr, n in self_time.most_common(top_n):
        print(f"  {pct(n)}  {fr}")
    print()
    print(f"top {top_n * 2} inclusive (function anywhere on the stack)")
    for fr, n in inclusive.most_common(top_n * 2):
        print(f"  {pct(n)}  {fr}")


if __name__ == "__main__":
    main()
