"""The name a worker process is started by (`python -P -m lb.worker CHANNEL_FD LISTENER_FD...`):
every version of lb has it, so a master that restarts a worker from code on disk that is the
next version, or the previous one again, still finds it (lb/process/arbiter.py). The worker
is lb/process/worker.py."""

import sys

from lb.process.worker import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
