"""Issue 15, `l2rec report`: PNG charts, index.html and summary.json of what the recorder wrote, checked on
databases the recorder itself made (replays of real Bybit recordings, and of a generated stream over hours
with a hole that the recorder records as a gap), against SQL counts of the same database."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import orjson
import pytest

from l2rec.report.page import index_html
from l2rec.report.queries import Gap, Histogram, gap_in_range, latency_bin_edges
from l2rec.report.write import chart_names
from tests.helpers import DATA, GAPS_TABLE, TABLE, clean_env, run_supervisor

pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")

T0 = 1_733_011_200_000  # 2024-12-01T00:00:00Z
MINUTE_MS = 60_000
HOUR_MS = 3_600_000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Gaps written into the replayed database (the rows are the recorder's): times in ns of the exchange's
# clock, as a live recording's would be (a replay's own gaps lie at the time it ran).
XRP_GAP_NS = ((T0 + 1_000) * 1_000_000, (T0 + 2_500) * 1_000_000)


def l2rec(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "l2rec", *args], capture_output=True, text=True, timeout=180,
                          env=env or clean_env())


def replay(db: Path, path: Path, *extra: str) -> None:
    res = run_supervisor("--replay", str(path), "--db", str(db), "--health-file", f"{db}.health.json", *extra,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.fixture(scope="module")
def real_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bybit's own recordings replayed: linear XRPUSDT (2024-12-01) and two spot BTCUSDT captures
    (orderbook.1 and .50), plus gap rows of several reasons, one still open."""
    db = tmp_path_factory.mktemp("real") / "real.db"
    replay(db, DATA / "nautilus_trader__2024-12-01_XRPUSDT_ob500.data")
    replay(db, DATA / "FastMM__raw_md_stream.jsonl", "--category", "spot")
    replay(db, DATA / "tickvault__bybit_orderbook.jsonl", "--category", "spot")
    with sqlite3.connect(db) as c:
        (btc_first,), = c.execute(f"SELECT min(exchange_timestamp) FROM {TABLE} WHERE symbol = 'BTCUSDT'")
        gaps = [("linear", "orderbook.500.XRPUSDT", "XRPUSDT", 500, "u_jump", *XRP_GAP_NS),
                ("linear", "orderbook.500.XRPUSDT", "XRPUSDT", 500, "disconnect", (T0 + 4_000) * 1_000_000,
                 (T0 + 4_200) * 1_000_000),
                ("spot", "orderbook.50.BTCUSDT", "BTCUSDT", 50, "disconnect", (btc_first + 3_000) * 1_000_000,
                 None)]
        for category, topic, symbol, depth, reason, detected, recovered in gaps:
            c.execute(f"INSERT INTO {GAPS_TABLE} (category, topic, symbol, depth, reason, detected_at, detected_ns,"
                      " recovered_at, recovered_ns) VALUES (?,?,?,?,?,?,?,?,?)",
                      (category, topic, symbol, depth, reason, "t", detected, None if recovered is None else "t",
                       recovered))
    return db


def stream_with_a_hole(path: Path) -> None:
    """A generated stream (bench/make_stream.py) of BTCUSDT, ETHUSDT and SOLUSDT over 3 hours; ETHUSDT's
    deltas of 01:00-01:20 are missing, so the recorder sees its u jump: a u_jump gap, and no ETHUSDT row
    after it (a replay has no fresh snapshot to resync from)."""
    from bench.make_stream import messages

    frames = 3000
    with path.open("wb") as fh:
        for i, line in enumerate(messages(3, frames, seed=3)):
            msg = orjson.loads(line)
            msg["ts"] = T0 + i * 3 * HOUR_MS // frames
            if "cts" in msg:
                msg["cts"] = msg["ts"] - 1
            if msg["topic"].endswith("ETHUSDT") and T0 + HOUR_MS <= msg["ts"] < T0 + HOUR_MS + 20 * MINUTE_MS:
                continue
            fh.write(orjson.dumps(msg) + b"\n")


@pytest.fixture(scope="module")
def hours_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("hours")
    stream = tmp / "hours.jsonl"
    stream_with_a_hole(stream)
    db = tmp / "hours.db"
    replay(db, stream, "--category", "linear")
    return db


def sql(db: Path, query: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as c:
        return c.execute(query, args).fetchall()


class Links(HTMLParser):
    """Every file index.html points at: img src and a href (page anchors left out)."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img" and a.get("src"):
            self.images.append(str(a["src"]))
        if tag == "a" and a.get("href") and not str(a["href"]).startswith("#"):
            self.links.append(str(a["href"]))


def check_png(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > 5_000, (path, len(data))
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        w, h = im.size
    assert w >= 600 and h >= 200, (path, w, h)
    return w, h


def check_page(out: Path) -> Links:
    """index.html references every PNG written, and only files that exist (next to it)."""
    page = Links()
    page.feed((out / "index.html").read_text(encoding="utf-8"))
    from urllib.parse import unquote

    for ref in page.images + page.links:
        assert "://" not in ref and not ref.startswith("/"), ref  # relative: the directory is self-contained
        assert (out / unquote(ref)).is_file(), ref
    assert {unquote(r) for r in page.images} == {p.name for p in out.glob("*.png")}
    return page


# -- on the replayed real recordings ------------------------------------------------------------------------

def test_a_report_of_replayed_recordings_has_valid_charts_a_page_and_the_databases_counts(
        real_db: Path, tmp_path: Path) -> None:
    before = hashlib.sha256(real_db.read_bytes()).hexdigest()
    out = tmp_path / "report"
    res = l2rec("report", "--db", str(real_db), "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert hashlib.sha256(real_db.read_bytes()).hexdigest() == before  # read-only: the database is untouched
    summary = json.loads((out / "summary.json").read_text())
    assert f"report of {summary['rows']} rows of 2 symbols written to {out / 'index.html'}" in res.stdout

    pngs = sorted(p.name for p in out.glob("*.png"))
    # replayed rows carry no receive time: no latency chart, and the page says why
    assert pngs == ["coverage.png", "symbol-BTCUSDT.png", "symbol-XRPUSDT.png"]
    for name in pngs:
        check_png(out / name)
    check_page(out)
    assert "No receive times" in (out / "index.html").read_text()

    rows = dict(sql(real_db, f"SELECT symbol, count(*) FROM {TABLE} GROUP BY symbol"))
    assert {s: v["rows"] for s, v in summary["symbols"].items()} == rows == {"XRPUSDT": 50, "BTCUSDT": 41}
    assert summary["rows"] == sum(rows.values())  # type: ignore[arg-type]
    for symbol, first, last in sql(real_db, f"SELECT symbol, min(exchange_timestamp), max(exchange_timestamp) "
                                            f"FROM {TABLE} GROUP BY symbol"):
        s = summary["symbols"][symbol]
        assert (s["first_exchange_timestamp"], s["last_exchange_timestamp"]) == (first, last)
        (first_ts,), = sql(real_db, f"SELECT timestamp FROM {TABLE} WHERE symbol = ? AND exchange_timestamp = ?",
                           (symbol, first))
        assert s["first_timestamp"] == first_ts  # the table's own ISO form
    for symbol in rows:
        by_reason = dict(sql(real_db, f"SELECT reason, count(*) FROM {GAPS_TABLE} WHERE symbol = ? GROUP BY reason",
                             (symbol,)))
        assert summary["symbols"][symbol]["gaps"] == by_reason
        assert summary["symbols"][symbol]["gaps_total"] == sum(by_reason.values())  # type: ignore[arg-type]
    assert summary["symbols"]["XRPUSDT"]["gaps"] == {"disconnect": 1, "u_jump": 1}
    assert summary["symbols"]["BTCUSDT"]["latency"] is None


def test_a_range_and_symbols_select_rows_and_gaps_as_sql_does(real_db: Path, tmp_path: Path) -> None:
    since, until = "2024-12-01T00:00:02Z", "2024-12-01T00:00:04"
    res = l2rec("report", "--db", str(real_db), "--out", str(tmp_path), "--symbols", "XRPUSDT,BTCUSDT",
                "--since", since, "--until", until)
    assert res.returncode == 0, res.stderr
    assert "no rows of BTCUSDT in range" in res.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    (n,), = sql(real_db, f"SELECT count(*) FROM {TABLE} WHERE symbol = 'XRPUSDT' AND exchange_timestamp >= ? "
                         "AND exchange_timestamp < ?", (T0 + 2_000, T0 + 4_000))
    assert list(summary["symbols"]) == ["XRPUSDT"] and summary["symbols"]["XRPUSDT"]["rows"] == n
    assert summary["symbols_without_rows"] == ["BTCUSDT"]
    # the u_jump gap (00:00:01-00:00:02.5) overlaps the range, the disconnect at 00:00:04 does not
    assert summary["symbols"]["XRPUSDT"]["gaps"] == {"u_jump": 1}
    assert (summary["since"], summary["until"]) == ("2024-12-01T00:00:02.000Z", "2024-12-01T00:00:04.000Z")
    check_page(tmp_path)


# -- on a replay over hours, with a hole the recorder saw -----------------------------------------------------

def test_coverage_and_the_recorders_own_gap_agree_with_sql(hours_db: Path, tmp_path: Path) -> None:
    res = l2rec("report", "--db", str(hours_db), "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    (first, last), = sql(hours_db, f"SELECT min(exchange_timestamp), max(exchange_timestamp) FROM {TABLE}")
    start, end = first // MINUTE_MS, -(-(last + 1) // MINUTE_MS)  # type: ignore[operator]
    assert summary["range"]["minutes"] == end - start
    for symbol, minutes, n in sql(hours_db, f"SELECT symbol, count(DISTINCT exchange_timestamp / 60000), count(*) "
                                            f"FROM {TABLE} GROUP BY symbol"):
        s = summary["symbols"][symbol]
        assert s["rows"] == n and s["minutes_with_rows"] == minutes
        assert s["coverage_percent"] == round(100 * minutes / (end - start), 3)  # type: ignore[operator]
    eth = summary["symbols"]["ETHUSDT"]
    assert 25 < eth["coverage_percent"] < 40  # its rows stop at the hole, 1 h into 3
    assert eth["gaps"] == dict(sql(hours_db, f"SELECT reason, count(*) FROM {GAPS_TABLE} WHERE symbol = 'ETHUSDT' "
                                             "GROUP BY reason")) == {"u_jump": 1}
    assert summary["symbols"]["BTCUSDT"]["coverage_percent"] == 100.0
    assert eth["coverage_by_hour"] == {"2024-12-01T00:00:00.000Z": 100.0}  # hours without rows are left out
    check_png(tmp_path / "coverage.png")
    for symbol in ("BTCUSDT", "ETHUSDT", "SOLUSDT"):
        check_png(tmp_path / f"symbol-{symbol}.png")
    check_page(tmp_path)


def test_receive_latency_comes_from_receive_times_where_rows_have_them(hours_db: Path, tmp_path: Path) -> None:
    # A copy of the replayed database whose rows got receive times (a replay has none): 20-29 ms late.
    db = tmp_path / "late.db"
    with sqlite3.connect(hours_db) as src, sqlite3.connect(db) as dst:
        src.backup(dst)
    with sqlite3.connect(db) as c:
        c.execute(f"UPDATE {TABLE} SET recv_time_ns = (exchange_timestamp + 20 + id % 10) * 1000000 "
                  "WHERE symbol != 'SOLUSDT'")
    out = tmp_path / "out"
    res = l2rec("report", "--db", str(db), "--out", str(out))
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    check_png(out / "latency.png")
    check_page(out)
    (n,), = sql(db, f"SELECT count(*) FROM {TABLE} WHERE recv_time_ns IS NOT NULL")
    assert summary["latency"]["rows"] == n
    assert summary["symbols"]["SOLUSDT"]["latency"] is None
    btc = summary["symbols"]["BTCUSDT"]["latency"]
    assert 20 < btc["p50_ms"] <= 30 and 20 < btc["p99_ms"] <= 30


# -- refusals ---------------------------------------------------------------------------------------------

def test_without_matplotlib_the_report_exits_78_naming_the_extra(real_db: Path, tmp_path: Path) -> None:
    # A matplotlib that cannot be imported, ahead of the real one on the path: as if it were not installed.
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "matplotlib.py").write_text("raise ModuleNotFoundError(\"No module named 'matplotlib'\")\n")
    res = l2rec("report", "--db", str(real_db), "--out", str(tmp_path / "out"),
                env=clean_env(PYTHONPATH=str(shim)))
    assert res.returncode == 78, res.stderr
    assert "pip install 'bybit-l2-recorder[report]'" in res.stderr and "matplotlib" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("args", "code", "words"), [
    (("--db", "{tmp}/none.db"), 78, "'db' = '{tmp}/none.db': no such database file"),
    (("--table", "nope"), 78, "'table' = 'nope': no such table"),
    (("--since", "yesterday"), 78, "'since' = 'yesterday': must be an ISO-8601 time"),
    (("--since", "2024-12-02", "--until", "2024-12-01"), 78, "must be after since (2024-12-02T00:00:00.000Z)"),
    (("--symbols", "NOT A SYMBOL"), 78, "'symbols'"),
    (("--since", "2030-01-01"), 65, "no rows in table l2_training_data_practical"),
    (("--symbols", "ETHUSDT"), 65, "no rows of ETHUSDT"),
    (("--db", "postgresql://u:secret@localhost/x"), 78, "postgresql://u:***@localhost/x"),
    (("--out", "{real_db}"), 78, "'out'"),
])
def test_bad_input_is_one_line_and_an_exit_code(real_db: Path, tmp_path: Path, args: tuple[str, ...], code: int,
                                                words: str) -> None:
    argv = {"--db": str(real_db), "--out": str(tmp_path / "out")}
    rest: list[str] = []
    it = iter(args)
    for flag in it:
        value = next(it).format(tmp=tmp_path, real_db=real_db)
        if flag in argv:
            argv[flag] = value
        else:
            rest += [flag, value]
    res = l2rec("report", *[x for kv in argv.items() for x in kv], *rest)
    assert res.returncode == code, res.stderr
    assert words.format(tmp=tmp_path) in res.stderr
    assert res.stderr.startswith("l2rec report: ") and len(res.stderr.strip().splitlines()) == 1
    assert "Traceback" not in res.stderr and "secret" not in res.stderr


# -- the parts, without a database ------------------------------------------------------------------------

def test_chart_file_names_are_safe_and_distinct() -> None:
    names = chart_names(["BTCUSDT", "A/B", "A?B", "a_b", "../x", ""])
    assert names["BTCUSDT"] == "symbol-BTCUSDT.png"
    assert len(set(n.lower() for n in names.values())) == len(names)
    assert all("/" not in n and "?" not in n for n in names.values())


def test_the_page_escapes_what_comes_from_the_database() -> None:
    evil = '<script>alert("x")</script>'
    summary = {
        "table": "t&<b>", "database": "d.db", "generated_at": "now", "rows": 1,
        "range": {"start": "a", "end": "b", "minutes": 1},
        "charts": {"coverage": "coverage.png"},
        "symbols": {evil: {"rows": 1, "first_timestamp": "f", "last_timestamp": "l", "coverage_percent": 100.0,
                           "gaps_total": 1, "gaps": {'"><img src=x>': 1}, "latency": None,
                           "chart": 'symbol-a"b.png'}},
    }
    page = index_html(summary)
    assert "<script>" not in page and '"><img src=x>' not in page and "t&<b>" not in page
    assert "&lt;script&gt;" in page and "t&amp;&lt;b&gt;" in page
    links = Links()
    links.feed(page)
    assert links.images == ["coverage.png", "symbol-a%22b.png"]


def test_latency_bins_and_percentiles() -> None:
    assert latency_bin_edges(0) == (0.0, 1.0) and latency_bin_edges(99) == (99.0, 100.0)
    assert latency_bin_edges(100) == (100.0, 110.0) and latency_bin_edges(189) == (990.0, 1000.0)
    assert latency_bin_edges(190) == (1000.0, 1100.0) and latency_bin_edges(279) == (9900.0, 10000.0)
    h = Histogram()
    h.add(5, 50)
    h.add(20, 49)
    h.add(150, 1)  # 600-610 ms
    assert (h.rows, h.percentile(0.5), h.percentile(0.99), h.percentile(1.0)) == (100, 6.0, 21.0, 610.0)


def test_a_gap_is_in_range_when_it_overlaps_it() -> None:
    g = Gap("X", "t", "u_jump", 10 * 1_000_000, 20 * 1_000_000)
    assert gap_in_range(g, None, None) and gap_in_range(g, 15, 30) and gap_in_range(g, 0, 11)
    assert not gap_in_range(g, 21, None) and not gap_in_range(g, None, 10)
    still_open = Gap("X", "t", "disconnect", 10 * 1_000_000, None)
    assert gap_in_range(still_open, 1_000, None) and not gap_in_range(still_open, None, 5)
