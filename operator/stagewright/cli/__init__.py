"""The ``stagewright`` command line (also the ``kubectl stagewright`` plugin).

One module per job: ``entry`` parses and dispatches, ``offline`` holds the verbs that need no
cluster (run, render, inspect, crd), ``kube`` is the only client of the cluster, ``apply``,
``follow``, ``progress``, ``display``, ``tables``, ``describe`` and ``outcome`` make up the
cluster verbs that ``commands`` ties together.
"""

from stagewright.cli.entry import main

__all__ = ["main"]
