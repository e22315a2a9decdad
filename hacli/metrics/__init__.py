"""Observing the HA engine from outside its call path.

* :mod:`hacli.metrics.prometheus` -- a prometheus-client collector over the
  engine's counters (``hacli serve --metrics-port``, ``ha status --prometheus``);
* :mod:`hacli.metrics.watch` -- JSON views of the groups and of member state
  changes (``ha status --watch``, ``hacli serve``'s status socket).

Both only read what :mod:`hacli.engine.stats` and the member state machine
keep; no click or rich here.
"""
