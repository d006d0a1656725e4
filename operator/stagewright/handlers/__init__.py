"""The operator's runtime: everything that talks to the cluster and to registries.

kopf's start-up and clean-up (``registration``), leader election, the informers and work queue,
the reconciler and the paths it calls (completion, signing, multi-platform builds), the
triggers' polls and webhook endpoint, metrics and probes. The decisions they act on are pure
modules below (``resources``, ``status``, ``triggers``, ``signing``, ``platforms``, ...).
Importing this package registers the handlers with kopf's default registry.
"""

from stagewright.handlers import registration

__all__ = ["registration"]
