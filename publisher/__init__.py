"""Host side: build boot media, sign and publish plans and artifacts.

May import from ``guest`` (the contract); never from ``watcher``.
"""
