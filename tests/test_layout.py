"""The installed distribution: one import name (`l2rec`), its entry points, and the layout rules that keep
it readable (every message type in messages/, actors dispatch by table)."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata as md
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import l2rec
from tests.conftest import DATA, ROOT, clean_env

DIST = "bybit-l2-recorder"


def _outside(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in this venv's Python from a directory outside the checkout."""
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env=clean_env())


def test_the_distribution_installs_one_import_name() -> None:
    assert md.distribution(DIST).read_text("top_level.txt").split() == ["l2rec"]
    assert set(md.packages_distributions()["l2rec"]) == {DIST}
    assert sorted(k for k, v in md.packages_distributions().items() if DIST in v) == ["l2rec"]


@pytest.mark.parametrize("name", ["supervisor", "actors", "messages", "recorder"])
def test_generic_names_are_not_importable_outside_the_checkout(name: str, tmp_path: Path) -> None:
    res = _outside(f"import {name}", tmp_path)
    assert res.returncode != 0 and f"No module named '{name}'" in res.stderr


def test_the_package_imports_outside_the_checkout(tmp_path: Path) -> None:
    res = _outside("import l2rec.actors.book, l2rec.messages.book, l2rec.processes.root, l2rec.cli; "
                   "print(l2rec.actors.book.__file__)", tmp_path)
    assert res.returncode == 0, res.stderr
    # the card's top-level actors/ folder is the package's l2rec.actors
    assert Path(res.stdout.strip()).resolve() == (ROOT / "actors" / "book.py").resolve()


def test_console_script_and_module_entry_points(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("l2rec")
    version = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.strip() == f"l2rec {md.version(DIST)}"
    helped = subprocess.run([sys.executable, "-m", "l2rec", "record", "--help"], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert helped.returncode == 0 and "--replay PATH" in helped.stdout and "--ws-url URL" in helped.stdout
    bad = subprocess.run([str(script), "record", "--depth", "2000", "--db", str(tmp_path / "x.db")],
                         capture_output=True, text=True, timeout=60, env=clean_env())
    assert bad.returncode == 78
    assert bad.stderr.startswith("l2rec record: config error: config key 'orderbook_depth' = 2000")


def test_l2rec_record_replays_like_supervisor_py(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    res = subprocess.run([sys.executable, "-m", "l2rec", "record", "--replay",
                          str(DATA / "nautilus_trader__2024-12-01_XRPUSDT_ob500.data"), "--db", str(db),
                          "--health-file", str(tmp_path / "h.json")],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path, env=clean_env())
    assert res.returncode == 0, res.stderr
    import sqlite3
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM l2_training_data_practical").fetchone()[0] == 50


def _modules() -> list[str]:
    return [m.name for m in pkgutil.walk_packages(l2rec.__path__, "l2rec.") if not m.name.endswith("__main__")]


def test_every_message_type_lives_in_messages() -> None:
    """Frozen, slotted dataclasses passed between actors and processes are defined in messages/ only."""
    for name in _modules():
        if name.startswith("l2rec.messages") or not name.startswith(("l2rec.actors", "l2rec.processes")):
            continue
        module = importlib.import_module(name)
        own = [obj for obj in vars(module).values()
               if inspect.isclass(obj) and obj.__module__ == name and dataclasses.is_dataclass(obj)
               and obj.__dataclass_params__.frozen]  # type: ignore[attr-defined]
        assert not own, f"{name} defines message types {own}; they belong in messages/"
    for name in _modules():
        if name.startswith("l2rec.messages."):
            module = importlib.import_module(name)
            for obj in vars(module).values():
                if inspect.isclass(obj) and obj.__module__ == name and dataclasses.is_dataclass(obj):
                    assert obj.__dataclass_params__.frozen and hasattr(obj, "__slots__"), obj


def test_actors_dispatch_by_table_and_every_handled_type_is_a_message() -> None:
    from l2rec.actors.base import RecorderActor

    actors = []
    for name in _modules():
        if name.startswith("l2rec.actors."):
            module = importlib.import_module(name)
            actors += [obj for obj in vars(module).values()
                       if inspect.isclass(obj) and issubclass(obj, RecorderActor) and obj is not RecorderActor]
    assert {a.__name__ for a in actors} == {"BookActor", "ConnectionActor", "HealthActor", "ParserActor",
                                            "ReplayActor", "WriterActor"}
    for actor in actors:
        assert "on_receive" not in vars(actor), f"{actor.__name__} overrides on_receive; use @handles"
        assert actor._handlers, actor
        for message_type in actor._handlers:
            assert message_type.__module__.startswith("l2rec.messages."), (actor, message_type)


def test_logic_rooms_know_nothing_of_pykka() -> None:
    """venue, book, storage, supervision (but its process specs' config) and runtime are plain modules."""
    for name in _modules():
        if name.split(".")[1] in ("venue", "book", "storage", "supervision", "runtime"):
            source = Path(importlib.import_module(name).__file__ or "").read_text()
            assert "import pykka" not in source, name
