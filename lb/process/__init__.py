"""lb's processes: the master's workers and the master's own replacement.

- arbiter.py: the worker processes, started, watched and started again (gunicorn's
  arbiter), and, as one, the control plane's link to the data plane;
- worker.py: a worker process's entry and its side of the channel;
- channel.py: the master <-> worker framing (and the handoff channel's);
- upgrade.py: the old master's side of a hitless upgrade, its states as one table, and
  the gate admin commands pass;
- handoff.py: the two ends of the handoff channel (the new master, as the old one sees
  it; the old master, as one member of the new one's arbiter);
- systemd.py: sd_notify and socket activation (the service manager's side of a process).

Nothing here decides about nodes: the merge of the workers' reports and the handoff's
wire format are lb/core (merge.py, handoff.py). Only worker.py runs the data plane;
nothing here imports the control plane (serve.py wires the two).
"""
