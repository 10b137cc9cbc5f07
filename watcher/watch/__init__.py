"""``cloudboot watch``: file events -> debounced batches -> a dependency-aware pipeline.

The pieces are small and separately testable: ``ignore`` decides which paths matter,
``events`` turns watchdog callbacks into paths, ``debounce`` coalesces them into batches,
``pipeline`` runs the stages for a batch (plans, then kernel, then the VM), ``daemon``
ties them to threads and signals, ``status`` records what happened for ``cloudboot status``,
``service`` speaks sd_notify, ``agent`` installs the user service, ``gitops`` publishes a
whole workspace once for CI.
"""
