"""Issue 15, parts 1 and 2: ``/metrics`` (Prometheus' text format, served by the root from the status the
children report up) and the ops files in ``conf/`` that use its series.

The collector is tested from hand-built reports, without threads; the sinks' per-topic counts against real
SQLite files; then a live run against the fake exchange, scraped over HTTP, whose counters must equal the
database once the stream is quiet.
"""

from __future__ import annotations

import json
import math
import re
import signal
import socket
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from l2rec.cli import parse_args
from l2rec.messages.health import Status
from l2rec.messages.writer import GapRecord
from l2rec.runtime.buckets import COMMIT_BUCKETS_S, RECV_TO_COMMIT_BUCKETS_S, Buckets
from l2rec.runtime.config import ConfigError, build_config, from_env, from_mapping, load_toml
from l2rec.runtime.metrics import SERIES, start_metrics_server
from l2rec.runtime.summary import MetricsSnapshot, metrics_snapshot
from l2rec.storage.sqlite import Store
from l2rec.supervision.states import Role
from tests.fakes.bybit_server import FakeBybit
from tests.fakes.faults import Fault
from tests.helpers import GAPS_TABLE, ROOT, TABLE, clean_env, run_supervisor, wait_for
from tests.recorder_process import RecorderProcess
from tests.test_storage import make_row

BTC, ETH = "orderbook.50.BTCUSDT", "orderbook.50.ETHUSDT"
CONF = ROOT / "conf"

# The series of the issue, with their labels (the histograms' own labels aside).
EXPECTED: dict[str, tuple[str, tuple[str, ...]]] = {
    "l2rec_rows": ("counter", ("topic",)),
    "l2rec_gaps": ("counter", ("topic", "reason")),
    "l2rec_frames_rejected": ("counter", ("reason",)),
    "l2rec_topic_synced": ("gauge", ("topic",)),
    "l2rec_topic_last_message_age_seconds": ("gauge", ("topic",)),
    "l2rec_reconnects": ("counter", ("shard",)),
    "l2rec_child_restarts": ("counter", ("child",)),
    "l2rec_breaker_open": ("gauge", ("child",)),
    "l2rec_writer_queue_rows": ("gauge", ("shard",)),
    "l2rec_commit_seconds": ("histogram", ()),
    "l2rec_receive_to_commit_seconds": ("histogram", ()),
    "l2rec_process_resident_memory_bytes": ("gauge", ("role",)),
    "l2rec_process_cpu_seconds": ("counter", ("role",)),
    "l2rec_db_size_bytes": ("gauge", ()),
}


# -- reports as the children send them ------------------------------------------------------------------

def hist(bounds: tuple[float, ...], values_s: list[float]) -> dict[str, object]:
    b = Buckets(bounds)
    for v in values_s:
        b.observe_ns(round(v * 1e9))
    return b.status()


def writer(pid: int, rows: dict[str, int], gaps: dict[str, dict[str, int]], commits: list[float],
           latencies: list[float]) -> Status:
    return Status(Role.WRITER, "writer", None, pid, 0, {
        "rows_by_topic": rows, "gaps_by_topic": gaps, "commit_hist": hist(COMMIT_BUCKETS_S, commits),
        "recv_to_commit_hist": hist(RECV_TO_COMMIT_BUCKETS_S, latencies)})


def parser(pid: int, shard: int, **rejects: int) -> Status:
    return Status(Role.SHARD, "parser", shard, pid, 0, {"frames": 10, **{f"reject:{k}": v for k, v in rejects.items()}})


def connection(pid: int, shard: int, sessions: int) -> Status:
    return Status(Role.SHARD, "connection", shard, pid, 0, {"sessions": sessions})


def features(pid: int, shard: int, topics: dict[str, tuple[bool, int | None]], link_rows: int) -> Status:
    return Status(Role.SHARD, "features", shard, pid, 0, {
        "topics": {t: {"synced": s, "last_recv_ns": recv, "rows": 1} for t, (s, recv) in topics.items()},
        "writer_link": {"depth_rows": link_rows, "capacity_rows": 50_000}})


NOW_NS = 1_700_000_000_000_000_000


def sample_snapshot() -> MetricsSnapshot:
    """Two writer incarnations, a shard restarted once (its first incarnation's reports are ``earlier``),
    a second shard whose process is down."""
    earlier = [
        writer(10, {BTC: 100, ETH: 50}, {BTC: {"u_jump": 1}}, [0.002, 0.02], [0.04] * 3),
        parser(11, 0, bad_level=2),
        connection(11, 0, sessions=3),
    ]
    latest = [
        writer(20, {BTC: 7}, {BTC: {"shard_restart": 1}, ETH: {"downtime": 1}}, [0.0005], [0.3, 100.0]),
        parser(21, 0, bad_level=1, not_json=4),
        connection(21, 0, sessions=1),
        features(21, 0, {BTC: (True, NOW_NS - 2_000_000_000), ETH: (False, None)}, link_rows=12),
        features(31, 1, {"orderbook.50.SOLUSDT": (True, NOW_NS)}, link_rows=99),
    ]
    supervisor = {"writer": {"alive": True, "restarts": 1, "breaker": "closed"},
                  "shard-0": {"alive": True, "restarts": 1, "breaker": "closed"},
                  "shard-1": {"alive": False, "restarts": 6, "breaker": "open"}}
    snap = metrics_snapshot(earlier, latest, supervisor, NOW_NS)
    snap.rss_bytes = {"root": 30_000_000, "writer": 70_000_000}
    snap.cpu_s = {"root": 1.5, "writer": 12.25}
    snap.db_size_bytes, snap.db_disk_free_bytes, snap.db_disk_size_bytes = 4096, 10**9, 10**11
    return snap


def test_counters_add_up_over_incarnations_and_gauges_take_the_latest_report() -> None:
    snap = sample_snapshot()
    assert snap.rows == {BTC: 107, ETH: 50}
    assert snap.gaps == {(BTC, "u_jump"): 1, (BTC, "shard_restart"): 1, (ETH, "downtime"): 1}
    assert snap.rejected == {"bad_level": 3, "not_json": 4}
    assert snap.reconnects == {"0": 3}  # 4 sessions in all: the first connects, 3 reconnect
    assert snap.restarts == {"writer": 1, "shard-0": 1, "shard-1": 6}
    assert snap.breaker_open == {"writer": False, "shard-0": False, "shard-1": True}
    # shard-1 is down: its topic is not in sync and its link holds nothing, whatever its last report said
    assert snap.synced == {BTC: True, ETH: False, "orderbook.50.SOLUSDT": False}
    assert snap.age_s[BTC] == pytest.approx(2.0) and snap.age_s[ETH] == math.inf
    assert snap.queue_rows == {"0": 12, "1": 0}
    assert snap.commit.counts[0] == 1 and sum(snap.commit.counts) == 3
    assert snap.commit.sum_s == pytest.approx(0.0225)
    assert sum(snap.recv_to_commit.counts) == 5 and snap.recv_to_commit.counts[-1] == 1  # 100 s: above every bound


def test_a_bucket_holds_values_up_to_and_including_its_bound() -> None:
    b = Buckets((0.01, 0.1))
    for ns in (0, 10_000_000, 10_000_001, 100_000_000, 100_000_001):
        b.observe_ns(ns)
    assert b.counts == [2, 2, 1]
    assert b.status() == {"counts": [2, 2, 1], "sum_s": pytest.approx(0.220000002)}


# Straight to 127.0.0.1, whatever proxy the environment names.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(url: str) -> str:
    with HTTP.open(url, timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return str(resp.read().decode())


def scrape(url: str) -> dict[str, list[Sample]]:
    """Every sample of a scrape, by family name (a counter's family is named without ``_total``)."""
    out: dict[str, list[Sample]] = {}
    for fam in text_string_to_metric_families(get(url)):
        out.setdefault(fam.name, []).extend(fam.samples)
    return out


def scrape_if_up(url: str) -> dict[str, list[Sample]]:
    """A scrape, or nothing while the recorder does not listen yet."""
    try:
        return scrape(url)
    except urllib.error.URLError:
        return {}


def types(url: str) -> dict[str, str]:
    return {fam.name: fam.type for fam in text_string_to_metric_families(get(url))}


@pytest.fixture
def served() -> Iterator[str]:
    """The metrics server on an ephemeral port, serving ``sample_snapshot()``."""
    srv = start_metrics_server("127.0.0.1", free_port(), sample_snapshot)
    try:
        yield srv.url
    finally:
        srv.close()


def test_the_snapshot_is_served_in_prometheus_text_format(served: str) -> None:
    fams = scrape(served)
    kinds = types(served)
    for name, (kind, labels) in EXPECTED.items():
        assert kinds.get(name) == kind, name
        for s in fams[name]:
            assert set(s.labels) - {"le"} == set(labels), (name, s)
    rows = {s.labels["topic"]: s.value for s in fams["l2rec_rows"] if s.name == "l2rec_rows_total"}
    assert rows == {BTC: 107, ETH: 50}
    gaps = {(s.labels["topic"], s.labels["reason"]): s.value for s in fams["l2rec_gaps"]
            if s.name == "l2rec_gaps_total"}
    assert gaps == {(BTC, "u_jump"): 1, (BTC, "shard_restart"): 1, (ETH, "downtime"): 1}
    assert {s.labels["child"]: s.value for s in fams["l2rec_breaker_open"]} == {
        "writer": 0, "shard-0": 0, "shard-1": 1}
    assert {s.labels["topic"]: s.value for s in fams["l2rec_topic_last_message_age_seconds"]}[ETH] == math.inf
    assert {s.labels["role"]: s.value for s in fams["l2rec_process_cpu_seconds"]
            if s.name.endswith("_total")} == {"root": 1.5, "writer": 12.25}
    assert [s.value for s in fams["l2rec_db_size_bytes"]] == [4096]
    # a histogram's buckets are cumulative, end at +Inf and equal its count
    buckets = [(s.labels["le"], s.value) for s in fams["l2rec_commit_seconds"] if s.name.endswith("_bucket")]
    assert [le for le, _ in buckets] == [*(repr(float(b)) for b in COMMIT_BUCKETS_S), "+Inf"]
    counts = [v for _, v in buckets]
    assert counts == sorted(counts) and counts[0] == 1 and counts[-1] == 3
    count = next(s.value for s in fams["l2rec_commit_seconds"] if s.name.endswith("_count"))
    total = next(s.value for s in fams["l2rec_commit_seconds"] if s.name.endswith("_sum"))
    assert count == 3 and total == pytest.approx(0.0225)


def test_before_the_run_and_after_it_a_scrape_is_an_empty_page() -> None:
    srv = start_metrics_server("127.0.0.1", free_port(), lambda: None)
    try:
        assert scrape(srv.url) == {}
    finally:
        srv.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_port_in_use_is_a_config_error_naming_metrics_port_and_close_frees_the_port() -> None:
    srv = start_metrics_server("127.0.0.1", free_port(), sample_snapshot)
    with pytest.raises(ConfigError) as err:
        start_metrics_server("127.0.0.1", srv.port, sample_snapshot)
    assert err.value.key == "metrics_port" and "in use" in str(err.value)
    srv.close()
    again = start_metrics_server("127.0.0.1", srv.port, sample_snapshot)  # released, bindable at once
    again.close()
    with pytest.raises(ConfigError) as err:
        start_metrics_server("192.0.2.1", free_port(), sample_snapshot)  # TEST-NET-1: never this host's
    assert err.value.key == "metrics_host"


# -- configuration ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["-1", "65536", "http", "9100.5", True])
def test_a_bad_metrics_port_is_refused_naming_the_key_from_any_source(value: object, tmp_path: Path) -> None:
    sources = [lambda: build_config({}, {}, {"metrics_port": value}),  # a flag
               lambda: build_config({}, from_mapping({"metrics_port": value}, "the config dict"), {})]
    if isinstance(value, str):
        sources.append(lambda: build_config({}, from_env({"L2REC_METRICS_PORT": value}), {}))
        conf = tmp_path / "c.toml"
        conf.write_text(f"metrics_port = {json.dumps(value)}\n")
        sources.append(lambda: build_config(load_toml(conf), {}, {}))
    for make in sources:
        with pytest.raises(ConfigError) as err:
            make()
        assert err.value.key == "metrics_port" and "0 (off)" in str(err.value)


def test_metrics_keys_defaults_and_good_values() -> None:
    cfg = build_config({}, {}, {})
    assert (cfg.metrics_host, cfg.metrics_port) == ("127.0.0.1", 0)
    cfg = build_config({"metrics_host": "::"}, from_env({"L2REC_METRICS_PORT": "9464"}), {})
    assert (cfg.metrics_host, cfg.metrics_port) == ("::", 9464)
    assert build_config({}, {}, {"metrics_port": parse_args(["--metrics-port", "9100"]).metrics_port}).metrics_port \
        == 9100
    with pytest.raises(ConfigError) as err:
        build_config({"metrics_host": "a host"}, {}, {})
    assert err.value.key == "metrics_host"


def test_a_bad_metrics_port_flag_exits_78_with_one_line(tmp_path: Path) -> None:
    res = run_supervisor("--metrics-port", "nine", "--db", str(tmp_path / "x.db"))
    assert res.returncode == 78
    assert res.stderr.strip() == ("python supervisor.py: config error: config key 'metrics_port' = 'nine': "
                                  "must be a TCP port from 1 to 65535, or 0 (off)")
    res = run_supervisor("--db", str(tmp_path / "x.db"), env=clean_env(L2REC_METRICS_HOST="no spaces please"))
    assert res.returncode == 78 and "config key 'metrics_host'" in res.stderr and "Traceback" not in res.stderr


def test_a_metrics_port_in_use_exits_78_naming_it_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = run_supervisor("--ws-url", "ws://127.0.0.1:9/v5/public/linear", "--db", str(tmp_path / "x.db"),
                             "--metrics-port", str(port), "--log-file", str(tmp_path / "log.jsonl"))
    assert res.returncode == 78, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "config key 'metrics_port'" in lines[0] and "in use" in lines[0]
    assert not (tmp_path / "log.jsonl").exists()  # nothing started: no child, no log


# -- the sinks count what they inserted, per topic ---------------------------------------------------------

def test_the_sqlite_sink_counts_rows_and_gap_rows_it_inserted_per_topic(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    store = Store(str(db), TABLE)
    try:
        btc = [make_row(u, 10 * u, 1_700_000_000_000 + u) for u in range(1, 6)]
        eth = [make_row(u, 10 * u, 1_700_000_000_000 + u, symbol="ETHUSDT") for u in range(1, 4)]
        store.write([*btc, *eth])
        # a batch resent after a writer restart: 3 rows already present, 2 new, of two topics and depths
        again = [*btc[:2], eth[0], make_row(6, 60, 1_700_000_000_006), make_row(1, 10, 1, depth=200)]
        assert store.write(again) == 2
        gap = GapRecord("linear", BTC, "BTCUSDT", 50, 5, 9, "u_jump", 1_000, None)
        closed = GapRecord("linear", BTC, "BTCUSDT", 50, 5, 9, "u_jump", 1_000, 2_000)
        downtime = GapRecord("linear", ETH, "ETHUSDT", 50, 3, 4, "downtime", 5_000, 6_000)  # inserted closed
        store.write([], [gap])
        store.write([], [closed, downtime, gap])  # closing updates its row; an open record again adds nothing
        counted = store.committed.status()
    finally:
        store.close()
    with sqlite3.connect(db) as c:
        in_table = {f"orderbook.{d}.{s}": n for d, s, n in
                    c.execute(f"SELECT depth, symbol, count(*) FROM {TABLE} GROUP BY depth, symbol")}
        gaps = {(t, r): n for t, r, n in c.execute(f"SELECT topic, reason, count(*) FROM {GAPS_TABLE} GROUP BY 1, 2")}
    assert counted["rows_by_topic"] == in_table == {BTC: 6, ETH: 3, "orderbook.200.BTCUSDT": 1}
    assert {(t, r): n for t, rs in counted["gaps_by_topic"].items() for r, n in rs.items()} == gaps == {
        (BTC, "u_jump"): 1, (ETH, "downtime"): 1}


def test_rows_a_constraint_refuses_are_not_counted(tmp_path: Path) -> None:
    """The group is redone a row at a time: only the rows stored count."""
    db = tmp_path / "t.db"
    Store(str(db), TABLE).close()
    with sqlite3.connect(db) as c:  # a CHECK of the user's own, added the only way SQLite allows: a trigger
        c.execute(f"CREATE TRIGGER odd BEFORE INSERT ON {TABLE} WHEN NEW.sequence % 2 = 1 "
                  "BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: odd'); END")
    store = Store(str(db), TABLE)
    try:
        store.write([make_row(u, 10 * u, 1_700_000_000_000 + u) for u in range(1, 11)])
        assert store.rows_failed == 5 and store.committed.rows == {BTC: 5}
    finally:
        store.close()


# -- the ops files ----------------------------------------------------------------------------------------

METRIC_NAME = re.compile(r"\bl2rec_[a-z0-9_]+")


def dashboard_exprs() -> list[str]:
    board = json.loads((CONF / "grafana-dashboard.json").read_text())
    exprs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "query", "definition") and isinstance(value, str):
                    exprs.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(board)
    return exprs


def alert_rules() -> list[tuple[str, str]]:
    """(alert, expr) of conf/prometheus-alerts.yml, by a plain structural read (no YAML library needed: each
    rule is ``- alert: NAME`` followed by ``expr: ...`` on one line or a folded block)."""
    lines = (CONF / "prometheus-alerts.yml").read_text().splitlines()
    rules: list[tuple[str, str]] = []
    name: str | None = None
    for i, line in enumerate(lines):
        m = re.match(r"^\s+- alert: (\S+)\s*$", line)
        if m:
            name = m.group(1)
            continue
        m = re.match(r"^(\s+)expr: (.*)$", line)
        if m and name is not None:
            expr = m.group(2).strip()
            if expr in (">-", "|-", ">", "|"):
                indent = len(m.group(1))
                block = []
                for follow in lines[i + 1:]:
                    if follow.strip() and len(follow) - len(follow.lstrip()) <= indent:
                        break
                    block.append(follow.strip())
                expr = " ".join(block).strip()
            rules.append((name, expr))
            name = None
    return rules


def served_names(fams: dict[str, list[Sample]]) -> set[str]:
    return {s.name for samples in fams.values() for s in samples}


def check_conf_names(served: set[str]) -> None:
    used = {n for e in dashboard_exprs() for n in METRIC_NAME.findall(e)} | {
        n for _, e in alert_rules() for n in METRIC_NAME.findall(e)}
    assert used, "no l2rec_ series found in conf/"
    assert used <= served, sorted(used - served)


def test_the_dashboard_and_the_alerts_use_only_series_the_exporter_serves(served: str) -> None:
    board = json.loads((CONF / "grafana-dashboard.json").read_text())
    assert board["title"] and board["panels"] and board["uid"]
    assert all(p.get("title") for p in board["panels"])
    rules = dict(alert_rules())
    # the four the issue asks for, and the recorder gone silent
    assert {"L2recTopicOutOfSync", "L2recNoRows", "L2recBreakerOpen", "L2recDiskAlmostFull", "L2recDown"} <= set(rules)
    assert all(expr for expr in rules.values())
    check_conf_names(served_names(scrape(served)))
    # every name the exporter can serve is listed in SERIES (what the module says it serves)
    assert {n.removesuffix("_total") for n in scrape(served)} <= set(SERIES)


def test_the_alert_rules_are_valid_yaml_in_prometheus_rule_layout() -> None:
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load((CONF / "prometheus-alerts.yml").read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]
    assert [(r["alert"], " ".join(r["expr"].split())) for r in rules] == [
        (a, " ".join(e.split())) for a, e in alert_rules()]
    for r in rules:
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, r
        assert r["annotations"]["summary"]


# promtool's unit test of the alert rules: series over time in, the alerts that must (not) fire out.
PROMTOOL_TEST = """\
rule_files: [RULES]
evaluation_interval: 15s
tests:
  - interval: 15s
    input_series:
      - series: 'l2rec_up{job="l2rec",instance="a"}'
        values: '1x8 _x20'
      - series: 'l2rec_topic_synced{job="l2rec",instance="a",topic="orderbook.50.BTCUSDT"}'
        values: '1 1 0x10'
      - series: 'l2rec_rows_total{job="l2rec",instance="a",topic="orderbook.50.BTCUSDT"}'
        values: '0+10x5 50x40'
      - series: 'l2rec_breaker_open{job="l2rec",instance="a",child="shard-0"}'
        values: '0 0 1 1'
      - series: 'l2rec_db_disk_free_bytes{job="l2rec",instance="a"}'
        values: '4x30'
      - series: 'l2rec_db_disk_size_bytes{job="l2rec",instance="a"}'
        values: '100x30'
    alert_rule_test:
      - {eval_time: 15s, alertname: L2recBreakerOpen, exp_alerts: []}
      - {eval_time: 30s, alertname: L2recBreakerOpen, exp_alerts: [{exp_labels: {severity: critical, job: l2rec,
         instance: a, child: shard-0}}]}
      - {eval_time: 60s, alertname: L2recTopicOutOfSync, exp_alerts: []}
      - {eval_time: 90s, alertname: L2recTopicOutOfSync, exp_alerts: [{exp_labels: {severity: warning,
         job: l2rec, instance: a, topic: orderbook.50.BTCUSDT}}]}
      - {eval_time: 4m, alertname: L2recNoRows, exp_alerts: []}
      - {eval_time: 7m, alertname: L2recNoRows, exp_alerts: [{exp_labels: {severity: critical, job: l2rec,
         instance: a}}]}
      - {eval_time: 6m, alertname: L2recDiskAlmostFull, exp_alerts: [{exp_labels: {severity: critical,
         job: l2rec, instance: a}}]}
      - {eval_time: 2m, alertname: L2recDown, exp_alerts: []}
      - {eval_time: 5m, alertname: L2recDown, exp_alerts: [{exp_labels: {severity: critical, job: l2rec}}]}
"""


def without_annotations(rules_text: str) -> str:
    """The rules file without its ``annotations:`` blocks (templates whose expansions promtool's unit tests
    would otherwise have to repeat word for word)."""
    out: list[str] = []
    skip_deeper_than: int | None = None
    for line in rules_text.splitlines():
        indent = len(line) - len(line.lstrip())
        if skip_deeper_than is not None and (not line.strip() or indent > skip_deeper_than):
            continue
        skip_deeper_than = None
        if line.strip() == "annotations:":
            skip_deeper_than = indent
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def test_the_alerts_fire_when_they_should_by_promtool(tmp_path: Path) -> None:
    """Prometheus' own checker and rule unit tests, where its promtool is installed (Debian's prometheus
    package); the structural checks above run everywhere."""
    import shutil
    import subprocess

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus): the rules' semantics not checked")
    rules = CONF / "prometheus-alerts.yml"
    check = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    bare = tmp_path / "rules.yml"
    bare.write_text(without_annotations(rules.read_text()))
    test = tmp_path / "alerts_test.yml"
    test.write_text(PROMTOOL_TEST.replace("RULES", str(bare)))
    res = subprocess.run([promtool, "test", "rules", str(test)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_systemd_unit_runs_flags_the_recorder_takes_and_logrotate_signals_only_the_root() -> None:
    unit = (CONF / "l2rec.service").read_text()
    logical = unit.replace("\\\n", " ").splitlines()  # systemd joins a line ending in a backslash with the next
    argv = next(ln for ln in logical if ln.startswith("ExecStart=")).removeprefix("ExecStart=").split()
    assert argv[0].endswith("/l2rec") and argv[1] == "record"
    args = parse_args(argv[2:])  # every flag of the unit is one the recorder takes
    assert args.metrics_port and args.log_file and args.pid_file
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit
    assert "RestartPreventExitStatus=78" in unit and "KillMode=mixed" in unit
    rotate = (CONF / "l2rec.logrotate").read_text()
    assert rotate.split("{")[0].split() == [args.log_file]  # the file the unit writes
    directives = [ln.strip() for ln in rotate.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert "copytruncate" not in directives and "create 0640 l2rec l2rec" in directives
    script = directives[directives.index("postrotate") + 1:directives.index("endscript")]
    assert script == ["systemctl reload l2rec.service >/dev/null 2>&1 || true"]


# -- a live run, scraped over HTTP -------------------------------------------------------------------------

def sighup_ignored(pid: int) -> bool:
    """Whether the process ignores SIGHUP (its signal disposition, from /proc: no race with its death)."""
    mask = next(ln.split()[1] for ln in Path(f"/proc/{pid}/status").read_text().splitlines()
                if ln.startswith("SigIgn:"))
    return bool(int(mask, 16) >> (signal.SIGHUP - 1) & 1)


def samples(fams: dict[str, list[Sample]], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value for samples_ in fams.values() for s in samples_
            if s.name == name}


def test_a_live_run_scraped_over_http_agrees_with_the_database(tmp_path: Path) -> None:
    """Two topics, a u jump (a gap) on one and a malformed frame (a rejected frame, a gap) on the other; then
    the exchange goes away (a disconnect gap each) and, the stream quiet, the counters equal the tables."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    faults = [Fault("u_jump", topic=BTC, after_frames=40), Fault("malformed", topic=ETH, after_frames=30, arg="nan")]
    with FakeBybit(symbols=["BTCUSDT", "ETHUSDT"], interval_ms=5, seed=15, faults=faults) as srv:
        rec = RecorderProcess(tmp_path, srv.url, "BTCUSDT,ETHUSDT", "--metrics-port", str(port))
        try:
            def recovered() -> dict[str, list[Sample]] | None:
                """Both faults made their gap (and the parser's report its rejected frame), and both topics
                are in sync again, by the scrape (each process reports about once a second)."""
                fams = scrape_if_up(url)
                gaps = {dict(k)["reason"] for k in samples(fams, "l2rec_gaps_total")}
                synced = samples(fams, "l2rec_topic_synced")
                return fams if gaps == {"u_jump", "rejected_frame"} and len(synced) == 2 and all(
                    synced.values()) and sum(samples(fams, "l2rec_rows_total").values()) > 100 and samples(
                    fams, "l2rec_frames_rejected_total") else None

            fams = wait_for(recovered, 60, "both gaps scraped and both topics in sync again", interval=0.2)
            assert isinstance(fams, dict)
            # every series of the issue, with its labels
            for name, (_kind, labels) in EXPECTED.items():
                assert fams.get(name), f"{name} missing from the scrape"
                for s in fams[name]:
                    assert set(s.labels) - {"le"} == set(labels), (name, s)
            assert {dict(k)["topic"] for k in samples(fams, "l2rec_rows_total")} == {BTC, ETH}
            assert {(dict(k)["topic"], dict(k)["reason"]) for k in samples(fams, "l2rec_gaps_total")} == {
                (BTC, "u_jump"), (ETH, "rejected_frame")}
            assert samples(fams, "l2rec_frames_rejected_total") == {(("reason", "bad_level"),): 1.0}  # the "nan"
            assert set(samples(fams, "l2rec_child_restarts_total")) == {(("child", "shard-0"),), (("child", "writer"),)}
            assert set(samples(fams, "l2rec_process_resident_memory_bytes")) == {
                (("role", r),) for r in ("root", "writer", "shard-0")}
            assert samples(fams, "l2rec_reconnects_total") == {(("shard", "0"),): 0.0}
            assert set(samples(fams, "l2rec_writer_queue_rows")) == {(("shard", "0"),)}
            assert samples(fams, "l2rec_receive_to_commit_seconds_count")[()] > 100
            check_conf_names(served_names(fams))

            srv.stop()  # the stream ends here: nothing can arrive any more

            def agrees() -> dict[str, list[Sample]] | None:
                """The scrape equals the tables (rows per topic, gap rows per topic and reason)."""
                fams = scrape(url)
                rows = {dict(k)["topic"]: v for k, v in samples(fams, "l2rec_rows_total").items()}
                in_table = {f"orderbook.{d}.{s}": float(n) for d, s, n in rec.query(
                    f"SELECT depth, symbol, count(*) FROM {TABLE} GROUP BY depth, symbol")}
                gaps = samples(fams, "l2rec_gaps_total")
                in_gaps = {(("reason", r), ("topic", t)): float(n) for t, r, n in rec.query(
                    f"SELECT topic, reason, count(*) FROM {GAPS_TABLE} GROUP BY topic, reason")}
                disconnected = {dict(k)["topic"] for k in gaps if dict(k)["reason"] == "disconnect"} == {BTC, ETH}
                unsynced = set(samples(fams, "l2rec_topic_synced").values()) == {0.0}  # the exchange is gone
                return fams if disconnected and unsynced and rows == in_table and gaps == in_gaps else None

            fams = wait_for(agrees, 60, "the scraped counters to equal the database once the stream is quiet",
                            interval=0.2)
            assert isinstance(fams, dict)
            assert sum(samples(fams, "l2rec_rows_total").values()) == rec.row_count()
            (gap_rows,), = rec.query(f"SELECT count(*) FROM {GAPS_TABLE}")
            assert sum(samples(fams, "l2rec_gaps_total").values()) == gap_rows
            assert samples(fams, "l2rec_db_size_bytes")[()] >= rec.db.stat().st_size

            # logrotate's SIGHUP (the unit's ExecReload, to the root only): the root reopens its log file
            pids = {name: int(p["pid"]) for name, p in rec.dump()["processes"].items()}  # type: ignore[union-attr]
            for name, pid in pids.items():  # and a SIGHUP to every process of the unit would end no child
                assert name == "root" or sighup_ignored(pid), name
            rec.log_file.rename(tmp_path / "recorder.log.1")
            rec.signal(signal.SIGHUP)
            wait_for(lambda: rec.log_events("log file reopened"), 30, "the log file reopened after SIGHUP")
        finally:
            code = rec.stop()
    assert code == 0, rec.stderr_text()[-3000:]


def test_an_embedded_recorder_serves_metrics_and_a_port_in_use_is_a_start_failure(tmp_path: Path) -> None:
    from l2rec import create_data_ingestor
    from l2rec.embed import StartFailed

    port = free_port()
    with FakeBybit(symbols=["BTCUSDT"], interval_ms=5, seed=16) as srv:
        config = {"symbol": "BTCUSDT", "db_path": str(tmp_path / "e.db"), "ws_url": srv.url, "metrics_port": port}
        ingestor = create_data_ingestor(config)
        try:
            assert ingestor.start() is True
            fams = wait_for(lambda: (f := scrape(f"http://127.0.0.1:{port}/metrics")) and f.get("l2rec_rows") and f,
                            30, "rows in the embedded recorder's metrics")
            assert isinstance(fams, dict) and fams["l2rec_up"][0].value == 1
            errors: list[Exception] = []
            second = create_data_ingestor({**config, "db_path": str(tmp_path / "f.db")})
            second.set_error_callback(errors.append)
            assert second.start() is False  # the first one holds the port
            assert isinstance(errors[0], StartFailed) and "metrics_port" in str(errors[0])
        finally:
            ingestor.stop()
    # stopped: the port is free again (the host process lives on)
    start_metrics_server("127.0.0.1", port, lambda: None).close()
