"""JUnit XML for CI: one test case per check, failures carrying the figures.

The format is the de-facto one that GitHub Actions (test-reporter actions), GitLab (``artifacts:reports:junit``)
and Jenkins (the JUnit plugin) read: ``<testsuites>`` of ``<testsuite>`` (name, tests, failures, errors,
skipped, time, timestamp, hostname, optional ``<properties>``) of ``<testcase>`` (name, classname, time),
a failed case holding one ``<failure message=… type=…>`` with the details as text. Written atomically.
"""

from __future__ import annotations

import datetime
import platform
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from .outputs import atomic_write


@dataclass(frozen=True)
class Case:
    name: str
    classname: str
    failure: str | None = None     # the one-line message of a failed case; None: passed
    details: str = ""              # the figures, as the failure's text (and as system-out of a passed case)
    time_s: float = 0.0


@dataclass
class Suite:
    name: str
    cases: list[Case] = field(default_factory=list)
    properties: dict[str, str] = field(default_factory=dict)
    time_s: float = 0.0

    @property
    def failures(self) -> int:
        return sum(c.failure is not None for c in self.cases)


def _suite_element(suite: Suite, timestamp: str) -> ET.Element:
    el = ET.Element("testsuite", {
        "name": suite.name, "tests": str(len(suite.cases)), "failures": str(suite.failures), "errors": "0",
        "skipped": "0", "time": f"{suite.time_s:.3f}", "timestamp": timestamp, "hostname": platform.node() or "localhost",
    })
    if suite.properties:
        props = ET.SubElement(el, "properties")
        for k, v in suite.properties.items():
            ET.SubElement(props, "property", {"name": k, "value": str(v)})
    for c in suite.cases:
        case = ET.SubElement(el, "testcase", {"name": c.name, "classname": c.classname, "time": f"{c.time_s:.3f}"})
        if c.failure is not None:
            fail = ET.SubElement(case, "failure", {"message": c.failure, "type": "OverTolerance"})
            fail.text = c.details or c.failure
        elif c.details:
            ET.SubElement(case, "system-out").text = c.details
    return el


def to_xml(suites: list[Suite], name: str) -> str:
    timestamp = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0, tzinfo=None).isoformat()
    root = ET.Element("testsuites", {
        "name": name, "tests": str(sum(len(s.cases) for s in suites)), "failures": str(sum(s.failures for s in suites)),
        "errors": "0", "time": f"{sum(s.time_s for s in suites):.3f}",
    })
    root.extend(_suite_element(s, timestamp) for s in suites)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(path: str | Path, suites: list[Suite], name: str) -> Path:
    text = to_xml(suites, name)
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def figures(metrics: dict[str, float]) -> str:
    """``max_abs=0.00123 rel_l2=4.5e-05 cosine=0.99999``: a check's metrics in one line."""
    return " ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
