"""The node's HTTP side, served by a started Node: /healthz (200 or 503 with the failing check),
/metrics (Prometheus text parsed back), the status page (tables, retry button guarded against
cross-site requests, retries in the audit trail) and authentication off loopback."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from node.config import ConfigError, NodeConfig, load_config
from node.ops.audit import study_trail_lines
from node.ops.health import check_health
from node.service import Node
from node.state import Index
from node.state.instances import InstanceRow
from tests.conftest import free_port

STUDY = "1.2.826.0.1.3680043.8.498.10"
CT = "1.2.826.0.1.3680043.8.498.11"
SEG_SOP = "1.2.826.0.1.3680043.8.498.12.1"


def _populate(index: Index, results: Path) -> dict[str, int]:
    """A received study, a done job with one delivered and one dead delivery, a QC failure."""
    for i in range(3):
        index.instances.add(InstanceRow(f"{CT}.{i}", "1.2.840.10008.5.1.4.1.1.2", STUDY, CT,
                                       f"/spool/{i}.dcm", 1000, "SCANNER", "10.0.0.7"), "CT")
    done = index.jobs.add(CT, SEG_SOP, "ct-liver", "ct-liver-basic", "d1")
    index.jobs.claim()
    index.jobs.finish(done, [("pacs", str(results / "a.dcm"), "1.2.3.1"),
                            ("archive", str(results / "b.dcm"), "1.2.3.2")],
                     preset_hash="f00d", models={"crlm-recurrence": "1.0.0"})
    delivered, dead = index.outbox.all(done)
    index.outbox.mark_attempt_failed(delivered["id"], "association refused",
                                     retry_at=time.time() + 5)
    index.outbox.mark_verified(delivered["id"], "c-find")
    index.outbox.mark_attempt_failed(dead["id"], "C-STORE status 0xA700", retry_at=None)
    qc = index.jobs.add(CT, SEG_SOP + "9", "ct-liver", "ct-liver-basic", "d2")
    index.jobs.claim()
    index.jobs.fail(qc, "QC failed: (0018,0050) SliceThickness 10 mm above 5 mm")
    return {"done": done, "qc": qc, "dead": dead["id"], "delivered": delivered["id"]}


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    """A node whose scheduler ticks do not run during a test (an hour apart): its job runner
    and outbox would otherwise race the test for the jobs and deliveries it sets up."""
    config = NodeConfig(state_dir=tmp_path / "state", listener={"port": free_port()},
                        status={"port": 0}, scan_interval=3600,
                        models=[{"path": "/opt/models/crlm", "sha256": "ab" * 32}])
    running = Node(config)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def _url(node: Node, path: str = "/") -> str:
    assert node.status_address is not None
    host, port = node.status_address
    return f"http://{host}:{port}{path}"


def test_healthz_passes_then_names_the_failing_check(node: Node) -> None:
    answer = httpx.get(_url(node, "/healthz"))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"receiver", "scheduler", "disk", "outbox", "ticks"}
    node.receiver.stop()
    answer = httpx.get(_url(node, "/healthz"))
    assert answer.status_code == 503
    failed = {name for name, check in answer.json()["checks"].items() if not check["ok"]}
    assert failed == {"receiver"}
    assert "not listening" in answer.json()["checks"]["receiver"]["detail"]


def test_health_checks_scheduler_disk_and_stuck_outbox(tmp_path: Path) -> None:
    config = NodeConfig(state_dir=tmp_path, status={"stuck_after": 600,
                                                    "scheduler_stale_after": 30})
    index = Index(config.index_path)
    now = time.time()
    assert check_health(config, index, True, True, now, now).ok
    _populate(index, tmp_path)
    # a pending delivery due for 10 minutes and 1 s: stuck
    [pending] = [r for r in index.outbox.all() if r["state"] == "dead"]
    index.outbox.retry([pending["id"]])
    health = check_health(config, index, True, True, now + 601, now + 601)
    assert {c.name for c in health.checks if not c.ok} == {"outbox"}
    assert not check_health(config, index, True, True, now - 31, now).ok  # stale heartbeat
    assert not check_health(config, index, True, False, now, now).ok  # scheduler stopped
    full = config.model_copy(update={"min_free_bytes": 2**62})
    assert [c.name for c in check_health(full, index, True, True, now, now).checks
            if not c.ok] == ["disk"]


def test_metrics_in_prometheus_format(node: Node, tmp_path: Path) -> None:
    _populate(node.index, tmp_path)
    answer = httpx.get(_url(node, "/metrics"))
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(answer.text)
               for s in family.samples}
    assert samples[("radiomics_node_instances_received_total", ())] == 3
    assert samples[("radiomics_node_received_bytes_total", ())] == 3000
    assert samples[("radiomics_node_jobs", (("state", "done"),))] == 1
    assert samples[("radiomics_node_jobs", (("state", "failed"),))] == 1
    assert samples[("radiomics_node_jobs", (("state", "queued"),))] == 0
    assert samples[("radiomics_node_job_duration_seconds_count", ())] == 2
    assert samples[("radiomics_node_job_duration_seconds_bucket", (("le", "+Inf"),))] == 2
    assert samples[("radiomics_node_job_duration_seconds_bucket", (("le", "1.0"),))] == 2
    assert samples[("radiomics_node_delivery_retries_total", ())] == 1
    assert samples[("radiomics_node_deliveries_dead_lettered_total", ())] == 1
    assert samples[("radiomics_node_queue_depth", (("queue", "deliveries_dead"),))] == 1
    assert samples[("radiomics_node_queue_depth", (("queue", "jobs_queued"),))] == 0
    assert samples[("radiomics_node_health_check", (("check", "receiver"),))] == 1
    assert samples[("radiomics_node_spool_bytes", ())] == 3000


def test_status_page_tables_and_retry_button(node: Node, tmp_path: Path) -> None:
    ids = _populate(node.index, tmp_path)
    page = httpx.get(_url(node))
    assert page.status_code == 200
    text = page.text
    for expected in ("Recent studies", "SCANNER@10.0.0.7", "ct-liver-basic",
                     "crlm-recurrence 1.0.0", "f00d", "QC failed: (0018,0050) SliceThickness",
                     "C-STORE status 0xA700", CT[-20:], "/opt/models/crlm", "ab" * 32,
                     "Dead-lettered deliveries"):
        assert expected in text, expected
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', text).group(1)
    form = {"csrf": token, "id": str(ids["dead"])}
    origin = _url(node).rstrip("/")
    # cross-site: no Origin/Referer, a foreign Origin, or a missing/stale token are refused
    assert httpx.post(_url(node, "/deliveries/retry"), data=form).status_code == 403
    assert httpx.post(_url(node, "/deliveries/retry"), data=form,
                      headers={"Origin": "http://evil.example"}).status_code == 403
    assert httpx.post(_url(node, "/deliveries/retry"), data={"id": form["id"]},
                      headers={"Origin": origin}).status_code == 403
    assert node.index.outbox.with_checks("dead")[0]["id"] == ids["dead"]
    answer = httpx.post(_url(node, "/deliveries/retry"), data=form,
                        headers={"Referer": origin + "/"})  # a browser without Origin
    assert answer.status_code == 303
    assert "1%20delivery%20due%20again" in answer.headers["location"]
    assert node.index.outbox.with_checks("dead") == []
    answer = httpx.post(_url(node, "/deliveries/retry"), data={"csrf": token, "all": "dead"},
                        headers={"Origin": origin})
    assert answer.status_code == 303 and "0%20deliveries" in answer.headers["location"]
    [retry] = [e for e in node.index.audit.study_trail(STUDY)["events"]
               if e["event"] == "delivery retry requested"]
    assert retry["actor"] == "status-page:loopback" and retry["delivery_id"] == ids["dead"]
    assert "1 delivery due again now" in httpx.get(_url(node, "/") + "?message=1%20delivery"
                                                   "%20due%20again%20now").text


def test_off_loopback_needs_credentials(tmp_path: Path) -> None:
    config_file = tmp_path / "node.yaml"
    config_file.write_text("status: {host: 0.0.0.0}\n")
    with pytest.raises(ConfigError, match="needs username and password or token"):
        load_config(config_file)
    config_file.write_text("status: {host: 0.0.0.0, username: it}\n")
    with pytest.raises(ConfigError, match="username and password go together"):
        load_config(config_file)
    config_file.write_text("status: {host: 0.0.0.0, token: s3cret}\n")
    assert load_config(config_file).status.token is not None


def test_off_loopback_credentials_must_not_be_empty(tmp_path: Path) -> None:
    config_file = tmp_path / "node.yaml"
    for settings, field in (("token: ''", "token"), ("token: ' \t'", "token"),
                            ("username: it, password: ''", "password"),
                            ("username: it, password: '  ', token: s3cret", "password")):
        config_file.write_text(f"status: {{host: 0.0.0.0, {settings}}}\n")
        with pytest.raises(ConfigError, match=f"not loopback\\) needs a non-empty {field}$"):
            load_config(config_file)
    config_file.write_text("status: {host: 127.0.0.1, token: ''}\n")  # loopback: no rule
    assert load_config(config_file).status.token is not None


def test_pages_for_another_host_name_are_refused(node: Node, tmp_path: Path) -> None:
    """DNS rebinding: a page of attacker.example whose name now resolves to the node reaches
    it with ``Host: attacker.example`` and its own origin; neither a page nor a retry."""
    ids = _populate(node.index, tmp_path)
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', httpx.get(_url(node)).text).group(1)
    rebound = f"attacker.example:{node.status_address[1]}"
    page = httpx.get(_url(node), headers={"Host": rebound})
    assert page.status_code == 421 and "<html" not in page.text
    answer = httpx.post(_url(node, "/deliveries/retry"), data={"csrf": token, "id": ids["dead"]},
                        headers={"Host": rebound, "Origin": f"http://{rebound}"})
    assert answer.status_code == 421
    assert [row["id"] for row in node.index.outbox.with_checks("dead")] == [ids["dead"]]


def test_credentials_are_checked(tmp_path: Path) -> None:
    config = NodeConfig(state_dir=tmp_path, listener={"port": free_port()},
                        status={"port": 0, "username": "it", "password": "pw",
                                "token": "t0ken"})
    node = Node(config)
    node.start()
    try:
        assert httpx.get(_url(node)).status_code == 401
        assert httpx.get(_url(node, "/metrics")).status_code == 401
        assert httpx.get(_url(node), auth=("it", "wrong")).status_code == 401
        assert httpx.get(_url(node), auth=("it", "pw")).status_code == 200
        assert httpx.get(_url(node, "/metrics"),
                         headers={"Authorization": "Bearer t0ken"}).status_code == 200
        assert httpx.get(_url(node), headers={"Authorization": "Bearer nope"}).status_code == 401
        garbage = "Basic " + base64.b64encode(b"\xff\xfe").decode()
        assert httpx.get(_url(node), headers={"Authorization": garbage}).status_code == 401
        # probes reach /healthz without credentials; it tells nothing about patients
        assert httpx.get(_url(node, "/healthz")).status_code == 200
        assert httpx.get(_url(node, "/nothing"), auth=("it", "pw")).status_code == 404
    finally:
        node.stop()


def test_status_page_says_when_a_job_reprocesses_changed_inputs(node: Node) -> None:
    first = node.index.jobs.add(CT, SEG_SOP, "ct-liver", "ct-liver-basic", "digest-1")
    node.index.jobs.add(CT, SEG_SOP, "ct-liver", "ct-liver-basic", "digest-2", rerun_of=first)
    text = httpx.get(_url(node)).text
    assert f"new result: inputs changed since job {first}" in text


def test_status_page_and_audit_show_a_jobs_delta_state(node: Node) -> None:
    """A job of a rule with prior: its lookup's state and reason on the job's row and in the
    study's audit trail (``node.flow.priors``)."""
    study = "1.2.826.0.1.3680043.8.498.78"
    node.index.instances.add(InstanceRow("1.2.826.0.1.3680043.8.498.77",
                                         "1.2.840.10008.5.1.4.1.1.2", study, CT, "/nowhere", 1,
                                         "SCANNER"), "CT")
    job = node.index.jobs.add(CT, SEG_SOP, "ct-liver", "ct-liver-basic", "digest", prior=True)
    assert job is not None
    assert "delta: pending" in httpx.get(_url(node)).text
    reason = "no prior study: pacs: studies of the patient from 20220702 to 20240630 other " \
        "than this one: 0 found"
    node.index.priors.finish(job, "none", reason)
    assert f"delta: none ({reason})" in httpx.get(_url(node)).text
    lines = study_trail_lines(node.index, study)
    assert f"    delta: none  {reason}" in lines
    assert any("no prior study" in line and f"reason={reason}" in line for line in lines)
