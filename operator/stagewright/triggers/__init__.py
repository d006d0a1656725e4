"""Triggers: decide when an ImageBuild builds again without a spec change, and why.

Pure decisions (``plan``, ``webhook``, ``budget``) apart from the two look-ups that poll the
outside world: git refs over smart HTTP (``gitrefs``) and base image digests (the registry
client's ``head_digest``). The runtime that schedules the polls, shares them across
ImageBuilds and serves webhooks lives in ``handlers/`` (``trigger_watch``, ``webhook_server``).
"""
