"""kopf handlers: thin glue from cluster events to the reconciler.

Importing this package registers the handlers with kopf's default registry.
"""

from stagewright.handlers import registration

__all__ = ["registration"]
