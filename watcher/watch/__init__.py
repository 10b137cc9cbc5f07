"""``cloudboot watch``: file events -> debounced batches -> a dependency-aware pipeline.

The pieces are small and separately testable: ``events`` turns watchdog callbacks into
paths (``publisher.ignore`` decides which matter), ``debounce`` coalesces them into
batches, ``pipeline`` runs the stages for a batch (plans, then kernel, then the VM) and
``outcomes`` types what each stage reports, ``adapters`` builds the real stages from the
config (plans are published by ``publisher.workspace``, which also serves ``cloudboot
publish``), ``daemon`` ties them to threads and signals, ``status`` records what happened
for ``cloudboot status`` (the only place outcomes become JSON), ``reload`` reads each
reload's result off the guest console (``lineclock`` dates its lines), ``sdnotify`` speaks
sd_notify and ``service`` installs the user service.
"""
