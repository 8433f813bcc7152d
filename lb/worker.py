"""The worker's old name: a master of the layout before lb/process/ starts its workers as
`python -m lb.worker` from the code on disk, also after this code replaced its own, until it
is upgraded. The worker is lb/process/worker.py."""

import sys

from lb.process.worker import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
