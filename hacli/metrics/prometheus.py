"""Prometheus metrics of the HA engine, read at scrape time.

The engine keeps plain counters (:mod:`hacli.engine.stats`); nothing of
prometheus-client runs on its call path.  :class:`HACollector` is a custom
collector: each scrape takes one copy of every member's counters
(:meth:`Engine.metrics <hacli.engine.Engine.metrics>`) and yields the
families below.  Labels: ``group`` (the HA group's label), ``member`` (the
member's serial), ``operation`` (the PKCS#11 call, ``C_Sign`` ...).

======================================  =========  ===============================
family                                  type       labels
======================================  =========  ===============================
``hacli_calls_total``                   counter    group, member, operation
``hacli_call_errors_total``             counter    group, member, operation
``hacli_call_duration_seconds``         histogram  group, member
``hacli_failovers_total``               counter    group, member
``hacli_member_failures_total``         counter    group, member
``hacli_recoveries_total``              counter    group, member
``hacli_gave_ups_total``                counter    group, member
``hacli_member_up``                     gauge      group, member
``hacli_member_in_flight``              gauge      group, member
``hacli_member_state_seconds``          gauge      group, member, state
======================================  =========  ===============================

:func:`exposition` gives the text format (``ha status --prometheus``, for
node-exporter's textfile collector); :func:`serve_http` serves it with
prometheus-client's own HTTP server (``hacli serve --metrics-port``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from hacli.engine.stats import LATENCY_BUCKETS, MemberMetrics

#: Where a scrape reads the members' counters (``Engine.metrics``).
Source = Callable[[], Sequence[MemberMetrics]]

_MEMBER = ["group", "member"]


class HACollector(Collector):
    """Yields the engine's counters as Prometheus metric families at each scrape."""

    def __init__(self, source: Source) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        members = self._source()
        now = time.time()
        calls = CounterMetricFamily("hacli_calls", "Calls run on a member, per operation.",
                                    labels=[*_MEMBER, "operation"])
        errors = CounterMetricFamily(
            "hacli_call_errors", "Calls that did not succeed on a member (request errors "
            "and member failures), per operation.", labels=[*_MEMBER, "operation"])
        latency = HistogramMetricFamily("hacli_call_duration_seconds",
                                        "Time a member took to answer a call.", labels=_MEMBER)
        counters: list[tuple[CounterMetricFamily, Callable[[MemberMetrics], int]]] = [
            (CounterMetricFamily("hacli_failovers", "Calls that failed on a member and "
                                 "moved on to another one.", labels=_MEMBER),
             lambda mm: mm.failovers),
            (CounterMetricFamily("hacli_member_failures", "Times a member was marked down.",
                                 labels=_MEMBER), lambda mm: mm.failures),
            (CounterMetricFamily("hacli_recoveries", "Times a member was recovered.",
                                 labels=_MEMBER), lambda mm: mm.recoveries),
            (CounterMetricFamily("hacli_gave_ups", "Times a member's automatic recovery "
                                 "attempts were used up.", labels=_MEMBER),
             lambda mm: mm.gave_ups),
        ]
        up = GaugeMetricFamily("hacli_member_up", "1 while the member serves calls.",
                               labels=_MEMBER)
        in_flight = GaugeMetricFamily("hacli_member_in_flight",
                                      "Calls running on the member now.", labels=_MEMBER)
        since = GaugeMetricFamily("hacli_member_state_seconds",
                                  "Seconds since the member entered its state.",
                                  labels=[*_MEMBER, "state"])
        for mm in members:
            key = [mm.group, mm.serial]
            for op, n in sorted(mm.calls.items()):
                calls.add_metric([*key, op], n)
                errors.add_metric([*key, op], mm.errors.get(op, 0))
            latency.add_metric(key, _cumulative(mm.buckets), mm.latency_sum)
            for family, value in counters:
                family.add_metric(key, value(mm))
            up.add_metric(key, 1 if mm.alive else 0)
            in_flight.add_metric(key, mm.in_flight)
            since.add_metric([*key, mm.state], max(0.0, now - mm.state_changed))
        yield from (calls, errors, latency, *(f for f, _ in counters), up, in_flight, since)


def _cumulative(buckets: Sequence[int]) -> list[tuple[str, float]]:
    """Prometheus' buckets: cumulative counts per upper bound, ``+Inf`` last."""
    out: list[tuple[str, float]] = []
    total = 0
    for bound, n in zip((*(str(b) for b in LATENCY_BUCKETS), "+Inf"), buckets, strict=True):
        total += n
        out.append((bound, total))
    return out


def registry_for(source: Source) -> CollectorRegistry:
    """A registry holding only the HA collector (no process or GC metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HACollector(source))
    return registry


def exposition(source: Source) -> bytes:
    """The Prometheus text format of the engine's counters now."""
    return generate_latest(registry_for(source))


def serve_http(source: Source, port: int, address: str = "127.0.0.1"
               ) -> tuple[WSGIServer, threading.Thread]:
    """prometheus-client's HTTP server on ``address:port`` (``/metrics``), in a
    daemon thread; returns the server (``server_port``; ``shutdown()`` ends it)."""
    return start_http_server(port, address, registry_for(source))


__all__ = ["HACollector", "Source", "exposition", "registry_for", "serve_http"]
