"""The Overview's cost panel against a real Prometheus: its total over a range is what the API
charged during that range, across a restart of the exporter."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pytest
import requests
from conftest import Processes, demo_raw_config, free_port, start_prometheus, wait_until
from promql import GRAFANA_VALUES, OVERVIEW, board, substitute, targets

from exporter.api import Api
from exporter.app import Exporter
from exporter.config import parse_config
from exporter.server import HttpServer, make_app
from exporter.simulator import DEMO_KEY, ManualClock, SimJob, Simulator
from exporter.storage import Storage

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.e2e

BATCH = SimJob(
    "cost-batch", "azure_document_translation", duration=100.0, start_delay=0.0, units=10
)


def charged_by_the_api(sim: Simulator) -> int:
    """What the simulated Translator says the batch has cost so far: the ground truth."""
    answer = requests.get(f"{sim.url}/translator/document/batches/{BATCH.job_id}", timeout=5,
                          headers={"Ocp-Apim-Subscription-Key": DEMO_KEY})  # fmt: skip
    total: int = answer.json()["summary"]["totalCharacterCharged"]
    return total


def cost_expression() -> str:
    """The expression of the Overview's "Characters charged (time range)" panel, as shipped."""
    (target,) = [
        t for t in targets(board(OVERVIEW)) if t.panel["title"] == "Characters charged (time range)"
    ]
    return target.expr


class Served:
    """An exporter on a fixed port with its storage, so that it can stop and start again."""

    def __init__(self, raw: dict[str, Any], directory: Path, port: int) -> None:
        self.storage = Storage.open(directory)
        self.exporter = Exporter(parse_config(raw, env={}), storage=self.storage)
        app = make_app(self.exporter.exposition, "/metrics", self.exporter.not_ready,
                       api=Api(self.exporter))  # fmt: skip
        self.server = HttpServer(app, f"127.0.0.1:{port}")
        self.server.start()

    def stop(self) -> None:
        self.server.stop()
        self.exporter.stop()
        self.storage.close()


def test_the_cost_panel_adds_up_across_a_restart(processes: Processes, tmp_path: Path) -> None:
    """Characters are charged before, during and after a restart of the exporter (on the same
    storage); the cost panel's expression, asked over the range between two scrapes, equals
    what the API charged between them, to the character."""
    clock = ManualClock(10.0)
    port = free_port()
    with Simulator(jobs=(BATCH,), clock=clock) as sim:
        raw = demo_raw_config(sim)
        raw["sources"] = [
            {**s, "job_ids": [BATCH.job_id]} for s in raw["sources"] if s["name"] == "translator"
        ]
        raw["sources"][0].pop("discovery", None)
        url = start_prometheus(processes, tmp_path, {
            "global": {"scrape_interval": "1s"},
            "scrape_configs": [{"job_name": "asyncjob",
                                "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}],
        })  # fmt: skip

        def scraped() -> list[tuple[float, float]]:
            """Every (time, value) Prometheus holds of the source's counter."""
            answer = requests.get(f"{url}/api/v1/query", timeout=10, params={
                "query": 'asyncjob_characters_charged_total{source="translator"}[10m]'})  # fmt: skip
            result = answer.json()["data"]["result"]
            return [(float(t), float(v)) for t, v in result[0]["values"]] if result else []

        def charged_and_scraped(at: float) -> tuple[int, float]:
            """Move the batch to `at` and poll it; returns what the API has charged by then
            and the time of a scrape that shows that total."""
            clock.now = at
            moved = time.time()
            served.exporter.poll_once()
            total = charged_by_the_api(sim)
            when: float = wait_until(
                lambda: next((t for t, v in scraped() if v == total and t > moved), None), 30,
                f"a scrape showing the {total} characters charged by {at}",
            )  # fmt: skip
            return total, when

        served = Served(raw, tmp_path / "store", port)
        try:
            first, range_start = charged_and_scraped(40.0)
            charged_and_scraped(60.0)
            served.stop()
            time.sleep(2.0)  # scrapes fail meanwhile: the series has a gap
            clock.now = 80.0  # the batch goes on while the exporter is down
            served = Served(raw, tmp_path / "store", port)
            last, range_end = charged_and_scraped(100.0)
        finally:
            served.stop()
        assert 0 < first < last  # the API did charge before and after the restart

        # The panel as Grafana asks it, over exactly [range_start, range_end]: both ends are
        # scrapes, so increase() has nothing to extrapolate.
        window = f"{round((range_end - range_start) * 1000)}ms"
        expr = substitute(cost_expression(), {**GRAFANA_VALUES, "$__range": window})
        answer = requests.get(f"{url}/api/v1/query", timeout=10,
                              params={"query": expr, "time": f"{range_end:.3f}"})  # fmt: skip
        (result,) = answer.json()["data"]["result"]
        assert float(result["value"][1]) == pytest.approx(last - first, abs=0.5)
