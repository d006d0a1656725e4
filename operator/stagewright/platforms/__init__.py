"""Multi-platform builds (``spec.platforms``): pure decisions.

``plan``: from each platform's pod to the build's next step (wait, retry a platform, fail
and stop the others, or assemble the index), the status of each platform, and what a
cross build must refuse before any pod starts. The I/O is ``handlers.platforms``'.
"""
