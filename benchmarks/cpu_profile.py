"""``python -m benchmarks.cpu_profile OUT run``: ``stagewright run`` under cProfile, in CPU time.

For burst.py's ``BENCH_CPROFILE=FILE``. The clock is the main thread's CPU time
(``time.thread_time``), not wall time: on a machine whose cores are all busy, a sampling
profiler such as py-spy also counts the moments the operator was runnable but not running
(after each send on loopback, say, which wakes the receiver), and so blames I/O for time the
scheduler took. Tracing every call costs the operator about three times its CPU, so compare
shares within one profile, never its times with an unprofiled run. The profile is written
when the operator exits (SIGTERM, as burst.py stops it).
"""

from __future__ import annotations

import cProfile
import runpy
import sys
import time


def main() -> None:
    """Run the operator's command line under the profiler; dump the stats on exit."""
    out, *arguments = sys.argv[1:]
    sys.argv = ["stagewright", *arguments]
    profiler = cProfile.Profile(time.thread_time)
    profiler.enable()
    try:
        runpy.run_module("stagewright.cli", run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
    finally:
        profiler.disable()
        profiler.dump_stats(out)


if __name__ == "__main__":
    main()
