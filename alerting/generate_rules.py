"""Generate alerting/rules/asyncjob-alerts.yaml from the alerts described here and the settings
in monitoring.yaml (the scrape-job selector, Grafana's and the runbook's URLs).

    python alerting/generate_rules.py          # rewrite the rule file
    python alerting/generate_rules.py --check  # exit 1 if the committed file differs

The rule file is committed (Prometheus and promtool read it as is); tests/test_alerting.py fails
when it and this generator disagree. As in the monitoring mixins, every metric selector carries
the one `selector` setting: the expressions below write it as `SELECTOR`. The states they name
and the stall threshold come from the vocabulary (exporter/model.py), which the status page
shares; tests/test_vocabulary.py fails when a rule names a state the vocabulary lacks.

Severities follow the mixins (kubernetes-mixin, node-mixin): `critical` only where nothing is
watched any more (the exporter or one of its shards is gone), `warning` for what someone should
look at in working hours (a job failed, a source cannot be polled), `info` for context.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from exporter.model import DOCUMENT_STATES, STALL_AFTER, UNFINISHED_STATES, State, state_words

REPO = Path(__file__).resolve().parent.parent
SETTINGS = REPO / "monitoring.yaml"
OUT = REPO / "alerting" / "rules" / "asyncjob-alerts.yaml"

# A job's series and a source's: per-job rules join on the first, per-source rules aggregate
# by the second, so that the shards of a sharded exporter add up to one figure (no `instance`).
JOB = "job, instance, provider, source, job_id"
SOURCE = "job, provider, source"
FRESH = 3600  # a finished job alerts for an hour after its finish time, then resolves
LOOKBACK = "15m"  # a missed scrape or an exporter restart neither resolves nor re-pages it
UNFINISHED = "|".join(UNFINISHED_STATES)
STALLED = round(STALL_AFTER.total_seconds())  # seconds without a change: as the status page
DASHBOARDS = {"job": "asyncjob-job", "source": "asyncjob-overview", "exporter": "asyncjob-overview"}


@dataclass(frozen=True)
class Settings:
    """monitoring.yaml: what the rules, the dashboards and the Kubernetes component share."""

    selector: str
    grafana_url: str
    runbook_url: str


def settings(path: Path = SETTINGS) -> Settings:
    raw = yaml.safe_load(path.read_text())
    keys = {"selector", "grafana_url", "runbook_url"}
    if not isinstance(raw, dict) or set(raw) != keys:
        raise SystemExit(f"{path}: needs exactly the keys {sorted(keys)}")
    return Settings(
        selector=str(raw["selector"]).strip(),
        grafana_url=str(raw["grafana_url"]).rstrip("/"),
        runbook_url=str(raw["runbook_url"]),
    )


@dataclass(frozen=True)
class Alert:
    """One alerting rule; `scope` says what it is about: one job, one source, or an exporter."""

    name: str
    expr: str
    for_: str
    severity: str
    scope: str
    summary: str
    description: str


# A job that finished within the last FRESH seconds (a job first seen finished has no finish
# time, so it never matches).
FINISHED_RECENTLY = (
    f"time() - max_over_time(asyncjob_finished_timestamp_seconds{{SELECTOR}}[{LOOKBACK}]) < {FRESH}"
)


def document(state: str) -> str:
    """A document state, checked against the vocabulary when the rules are generated."""
    if state not in DOCUMENT_STATES:
        raise ValueError(f"{state!r} is not one of {DOCUMENT_STATES}")
    return state


def finished_as(name: str, state: State, summary: str) -> Alert:
    """An alert for a job that finished in `state`: fired once, from its finish time."""
    return Alert(
        name,
        f"""\
{FINISHED_RECENTLY}
and on ({JOB})
  max_over_time(asyncjob_state{{SELECTOR, state="{state}"}}[{LOOKBACK}]) == 1
""",
        "5m",
        "warning",
        "job",
        summary,
        "Job {{ $labels.job_id }} of source {{ $labels.source }} ({{ $labels.provider }}) "
        f"{state_words(state)} {{{{ $value | humanizeDuration }}}} ago.",
    )


ALERTS = {
    "asyncjob-jobs": [
        finished_as("AsyncJobFailed", State.FAILED, "An asynchronous AI job has failed."),
        finished_as(
            "AsyncJobPartiallySucceeded",
            State.PARTIALLY_SUCCEEDED,
            "An asynchronous AI job finished with some of its tasks failed.",
        ),
        Alert(
            "AsyncJobDocumentsFailed",
            f"""\
max_over_time(asyncjob_documents{{SELECTOR, state="{document("failed")}"}}[{LOOKBACK}]) > 0
and on ({JOB})
  {FINISHED_RECENTLY}
""",
            "5m",
            "warning",
            "job",
            "Documents of a translation batch failed to translate.",
            "Batch {{ $labels.job_id }} of source {{ $labels.source }} finished with "
            "{{ $value }} failed document(s).",
        ),
        Alert(
            "AsyncJobStalled",
            f"""\
time() - asyncjob_last_progress_change_timestamp_seconds{{SELECTOR}} > {STALLED}
and on ({JOB}) asyncjob_state{{SELECTOR, state="{State.RUNNING}"}} == 1
and on ({JOB}) asyncjob_up{{SELECTOR}} == 1
""",
            "5m",
            "warning",
            "job",
            "A running asynchronous AI job has made no progress for a long time.",
            "Job {{ $labels.job_id }} of source {{ $labels.source }} ({{ $labels.provider }}) "
            "is running but its state and progress have not changed for "
            "{{ $value | humanizeDuration }}.",
        ),
        Alert(
            "AsyncJobOverdue",
            f"""\
time() - asyncjob_estimated_completion_timestamp_seconds{{SELECTOR}} > 900
and on ({JOB}) asyncjob_state{{SELECTOR, state=~"{UNFINISHED}"}} == 1
and on ({JOB}) asyncjob_up{{SELECTOR}} == 1
unless on ({JOB}) asyncjob_progress_ratio{{SELECTOR, phase="training"}} >= 1
""",
            "5m",
            "warning",
            "job",
            "An asynchronous AI job is past the completion time its API estimated.",
            "Job {{ $labels.job_id }} of source {{ $labels.source }} ({{ $labels.provider }}) "
            "was estimated to finish {{ $value | humanizeDuration }} ago.",
        ),
        Alert(
            # From the job's creation; a provider that gives no creation time (Stable
            # Diffusion) counts from the last change the exporter saw.
            "AsyncJobQueuedTooLong",
            f"""\
time() - (
  asyncjob_created_timestamp_seconds{{SELECTOR}}
  or asyncjob_last_progress_change_timestamp_seconds{{SELECTOR}}
) > 3600
and on ({JOB}) asyncjob_state{{SELECTOR, state="{State.NOT_STARTED}"}} == 1
""",
            "5m",
            "warning",
            "job",
            "An asynchronous AI job has waited a long time without starting.",
            "Job {{ $labels.job_id }} of source {{ $labels.source }} ({{ $labels.provider }}) "
            f"is {State.NOT_STARTED} {{{{ $value | humanizeDuration }}}} after it was created.",
        ),
        Alert(
            # Without `reason`: a job whose polls fail for one reason, then another, has been
            # failing all along. The description looks the current reason up.
            "AsyncJobPollingFailing",
            "max without (reason) (asyncjob_last_poll_error_info{SELECTOR}) == 1\n",
            "10m",
            "warning",
            "job",
            "The exporter cannot poll an asynchronous AI job.",
            "Polls of job {{ $labels.job_id }} of source {{ $labels.source }} "
            "({{ $labels.provider }}) have failed for at least 10 minutes, lately with reason "
            '{{ with printf `asyncjob_last_poll_error_info{job="%s",instance="%s",source="%s",'
            'job_id="%s"}` $labels.job $labels.instance $labels.source $labels.job_id | query }}'
            '{{ . | first | label "reason" }}{{ end }} (asyncjob_last_poll_error_info = '
            "{{ $value }}); the values shown are the last good ones.",
        ),
        Alert(
            # Jobs whose API says nothing for a day are history (a first listing's): not paged.
            "AsyncJobStateUnknown",
            f"""\
(asyncjob_state{{SELECTOR, state="{State.UNKNOWN}"}} == 1)
* on ({JOB}) group_left (vendor_status) asyncjob_info{{SELECTOR}}
unless on ({JOB})
  time() - asyncjob_last_update_timestamp_seconds{{SELECTOR}} > 86400
""",
            "15m",
            "warning",
            "job",
            "An asynchronous AI job reports a status the exporter does not know.",
            "Job {{ $labels.job_id }} of source {{ $labels.source }} ({{ $labels.provider }}) "
            "reports status {{ $labels.vendor_status }}, which the exporter maps to "
            f"{State.UNKNOWN} "
            "(asyncjob_state = {{ $value }}): it is neither alerted on as failed nor seen to "
            "finish.",
        ),
    ],
    "asyncjob-sources": [
        Alert(
            "AsyncJobSourcePollingFailing",
            f"""\
sum by ({SOURCE}) (
  rate(asyncjob_request_errors_total{{SELECTOR, reason!="throttled"}}[10m])
)
/
sum by ({SOURCE}) (rate(asyncjob_requests_total{{SELECTOR}}[10m]))
> 0.5
""",
            "10m",
            "warning",
            "source",
            "Most requests to a source's API fail.",
            "{{ $value | humanizePercentage }} of the requests to source {{ $labels.source }} "
            "({{ $labels.provider }}) failed over 10 minutes (throttling aside): its jobs are "
            "not being polled.",
        ),
        Alert(
            "AsyncJobFailureRatioHigh",
            f"""\
(
  sum by ({SOURCE}) (increase(asyncjob_jobs_finished_total{{SELECTOR, state="{State.FAILED}"}}[6h]))
  /
  sum by ({SOURCE}) (increase(asyncjob_jobs_finished_total{{SELECTOR}}[6h]))
) > 0.25
and on ({SOURCE})
  sum by ({SOURCE}) (increase(asyncjob_jobs_finished_total{{SELECTOR}}[6h])) >= 4
""",
            "15m",
            "warning",
            "source",
            "Many of a source's recent jobs failed.",
            "{{ $value | humanizePercentage }} of the jobs of source {{ $labels.source }} "
            "({{ $labels.provider }}) that finished in the last 6 hours failed.",
        ),
        Alert(
            "AsyncJobUpstreamThrottled",
            f"""\
sum by ({SOURCE}) (
  rate(asyncjob_request_errors_total{{SELECTOR, reason="throttled"}}[5m])
) > 0
""",
            "10m",
            "info",
            "source",
            "An upstream API keeps answering the exporter with HTTP 429.",
            "Source {{ $labels.source }} ({{ $labels.provider }}) is being throttled: "
            '{{ printf "%.2f" $value }} throttled requests per second over 5 minutes.',
        ),
        Alert(
            # The counter may start above zero (a config with more jobs than max_jobs): a
            # series younger than an hour counts whole.
            "AsyncJobJobsRejected",
            f"""\
sum by ({SOURCE}) (increase(asyncjob_jobs_rejected_total{{SELECTOR}}[1h])) > 0
or
sum by ({SOURCE}) (
  asyncjob_jobs_rejected_total{{SELECTOR}}
  unless asyncjob_jobs_rejected_total{{SELECTOR}} offset 1h
) > 0
""",
            "5m",
            "warning",
            "source",
            "A source is at its max_jobs and refuses jobs.",
            "Source {{ $labels.source }} ({{ $labels.provider }}) refused "
            "{{ $value | humanize }} job ID(s) in the last hour: it tracks max_jobs already, "
            "so those jobs are not watched.",
        ),
    ],
    "asyncjob-exporter": [
        Alert(
            "AsyncJobExporterDown",
            "up{SELECTOR} == 0\n",
            "5m",
            "critical",
            "exporter",
            "Prometheus cannot scrape asyncjob-exporter.",
            "The asyncjob-exporter target {{ $labels.instance }} of job {{ $labels.job }} is "
            "down (up = {{ $value }}); job alerts for it are inhibited until it is back.",
        ),
        Alert(
            "AsyncJobExporterAbsent",
            "absent(up{SELECTOR})\n",
            "5m",
            "critical",
            "exporter",
            "Prometheus has no asyncjob-exporter target at all.",
            "There is no up{SELECTOR} series (absent = {{ $value }}): the scrape job is "
            "missing or was renamed, so no AI job is watched.",
        ),
        Alert(
            # As kube-state-metrics' KubeStateMetricsShardsMissing: every shard exports
            # asyncjob_shard_info{shard, total_shards}; fewer distinct shards than
            # total_shards means the jobs of the missing ones are watched by nobody.
            "AsyncJobShardMissing",
            """\
count by (job, total_shards) (
  count by (job, total_shards, shard) (asyncjob_shard_info{SELECTOR})
)
unless on (job, total_shards)
  count_values by (job) (
    "total_shards", count by (job) (count by (job, shard) (asyncjob_shard_info{SELECTOR}))
  )
""",
            "15m",
            "critical",
            "exporter",
            "Shards of a sharded asyncjob-exporter are missing.",
            "Only {{ $value }} of the {{ $labels.total_shards }} shards of job "
            "{{ $labels.job }} are scraped: the jobs the others own are watched by nobody.",
        ),
        Alert(
            "AsyncJobConfigReloadFailed",
            "max_over_time(asyncjob_config_last_reload_successful{SELECTOR}[5m]) == 0\n",
            "10m",
            "warning",
            "exporter",
            "asyncjob-exporter could not reload its configuration.",
            "The last configuration reload of {{ $labels.instance }} failed "
            "(asyncjob_config_last_reload_successful = {{ $value }}): it runs the previous "
            "configuration, and will fail to start with the file as it is.",
        ),
    ],
}


def _select(text: str, selector: str) -> str:
    """Put the selector where SELECTOR stands; an empty one leaves the braces empty."""
    if not selector:
        return text.replace("{SELECTOR, ", "{").replace("{SELECTOR}", "")
    return text.replace("SELECTOR", selector)


def _dashboard_url(scope: str, s: Settings) -> str:
    url = f"{s.grafana_url}/d/{DASHBOARDS[scope]}"
    if scope == "job":
        return url + "?var-source={{ $labels.source }}&var-job_id={{ $labels.job_id }}"
    if scope == "source":
        return url + "?var-source={{ $labels.source }}"
    return url


def rule(alert: Alert, s: Settings) -> dict[str, Any]:
    return {
        "alert": alert.name,
        "expr": _Block(_select(alert.expr, s.selector)),
        "for": alert.for_,
        "labels": {"severity": alert.severity},
        "annotations": {
            "summary": alert.summary,
            "description": _select(alert.description, s.selector),
            "runbook_url": f"{s.runbook_url}#{alert.name.lower()}",
            "dashboard_url": _dashboard_url(alert.scope, s),
        },
    }


class _Block(str):
    """An expression YAML writes as a block (|) when it has more than one line."""

    __slots__ = ()


def _block(dumper: yaml.SafeDumper, value: _Block) -> yaml.ScalarNode:
    style = "|" if "\n" in value.rstrip("\n") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value.rstrip("\n"), style=style)


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Block, _block)

HEADER = """\
# Generated by alerting/generate_rules.py from its alert descriptions and monitoring.yaml;
# do not edit: change those, then run `make monitoring`.
#
# Selector: {selector}. Links: {grafana_url} (dashboard_url), {runbook_url} (runbook_url).
# Job alerts about a finished job fire from its finish time (asyncjob_finished_timestamp_seconds)
# for an hour, so each event notifies once; a job first seen already finished has no finish time
# and never pages. Per-source alerts aggregate across the shards of a sharded exporter.
"""


def render(s: Settings | None = None) -> str:
    s = s or settings()
    groups = [
        {"name": name, "rules": [rule(alert, s) for alert in alerts]}
        for name, alerts in ALERTS.items()
    ]
    body = yaml.dump({"groups": groups}, Dumper=_Dumper, sort_keys=False, width=1000)
    return HEADER.format(**vars(s)) + body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    text = render()
    if args.check:
        if OUT.read_text() != text:
            print(f"{OUT} is stale: run make monitoring", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
