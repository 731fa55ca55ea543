"""The live strategy file: validation, reload through a Kubernetes ConfigMap's symlink swap, and its effect."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from api.deps import ApiSettings, AppState
from api.strategy import (
    Strategy,
    StrategyHolder,
    StrategyWatcher,
    builtin,
    main,
    parse_strategy,
    token_id,
)
from api.testing import serve
from dm_resources.mongo import MongoStore
from tests.test_api_l2_cache import PARAMS, counter, store_reads

TOKEN = "a-service-token-of-32-characters"
GOOD = """
version: "2026.03.1"
cache:
  candles: {level: l1, l1_ttl_s: 30}
limits:
  page_max: 1000
"""


class ConfigMapDir:
    """A directory laid out as the kubelet mounts a ConfigMap: ``name -> ..data/name``, ``..data -> ..<ts>``.

    An update writes a new timestamped directory, points ``..data_tmp`` at it and renames that over
    ``..data`` (an atomic symlink swap), then removes the old directory: the file's own path never changes.
    """

    def __init__(self, root: Path, name: str = "strategy.yaml") -> None:
        self.root, self.name, self.n = root, name, 0
        root.mkdir(parents=True, exist_ok=True)

    @property
    def path(self) -> Path:
        return self.root / self.name

    def write(self, text: str) -> None:
        self.n += 1
        new = self.root / f"..2026_03_10_00_00_{self.n:02d}.000000001"
        new.mkdir()
        (new / self.name).write_text(text)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(new.name)
        old = os.readlink(self.root / "..data") if (self.root / "..data").is_symlink() else None
        os.replace(tmp, self.root / "..data")
        if not self.path.is_symlink():
            self.path.symlink_to(f"..data/{self.name}")
        if old is not None:
            for f in (self.root / old).iterdir():
                f.unlink()
            (self.root / old).rmdir()


def test_a_valid_file_parses_and_names_every_dataset() -> None:
    s = parse_strategy(GOOD.encode(), "strategy.yaml")
    assert s.version == "2026.03.1" and s.limits.page_max == 1000
    assert s.cache_for("candles").level == "l1" and s.cache_for("candles").l1_ttl_s == 30
    assert s.cache_for("analytics").level == "l1+l2" and s.cache_for("trades").level == "l1"  # defaults
    bare = parse_strategy(b"version: v0\n", "strategy.yaml")  # every dataset keeps its default
    assert bare.cache_for("candles").level == "l1+l2" and bare.cache_for("depth").level == "l1"
    toml = parse_strategy(b'version = "t1"\n[cache.analytics]\nlevel = "l2"\n', "strategy.toml")
    assert toml.cache_for("analytics").l2 and not toml.cache_for("analytics").l1


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("cache: {}", "version: Field required"),
        ("version: v1\ncache: {klines: {level: l1}}", "unknown datasets ['klines']"),
        ("version: v1\ncache: {trades: {level: l1+l2}}", "trades: level 'l1+l2' needs a dataset version"),
        ("version: v1\ncache: {candles: {level: l3}}", "cache.candles.level"),
        ("version: v1\ncache: {candles: {l1_ttl_s: 0}}", "l1_ttl_s: Input should be greater than 0"),
        ("version: v1\nlimits: {page_max: 5001}", "limits.page_max: Input should be less than or equal to 5000"),
        ("version: v1\nrate_limits: {default: 'lots'}", "'lots' is not a rate"),
        (f"version: v1\nrate_limits: {{tokens: {{{TOKEN}: 10/second}}}}", "never the token itself"),
        ("version: v1\ncaches: {}", "caches: Extra inputs are not permitted"),
        ("version: [1", "not valid YAML"),
        ("- a list", "must be a mapping"),
        ("version: 'has space'", "version: String should match pattern"),
    ],
)
def test_an_invalid_file_is_refused_with_the_reason(text: str, says: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_strategy(text.encode(), "strategy.yaml")
    assert says in str(err.value) and "strategy.yaml" in str(err.value)


def test_the_check_command_validates_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(GOOD)
    bad.write_text("version: v1\nlimits: {page_max: 0}\n")
    assert main(["check", str(good)]) == 0 and "ok: version 2026.03.1" in capsys.readouterr().out
    assert main(["check", str(bad)]) == 1 and "page_max" in capsys.readouterr().err


def test_a_configmap_swap_is_picked_up_and_an_invalid_one_keeps_the_previous(tmp_path: Path) -> None:
    cm = ConfigMapDir(tmp_path / "cm")
    cm.write(GOOD)
    holder = StrategyHolder(builtin())
    seen: list[str] = []
    w = StrategyWatcher(holder, cm.path, poll_s=3600, on_result=lambda r: seen.append(r.result))
    assert w.check() is not None and holder.strategy.version == "2026.03.1" and holder.last.result == "ok"
    assert w.check() is None  # unchanged: no read
    cm.write(GOOD.replace("2026.03.1", "2026.03.2").replace("1000", "200"))
    assert w.check() is not None and holder.strategy.version == "2026.03.2" and holder.strategy.limits.page_max == 200
    cm.write("version: 2026.03.3\nlimits: {page_max: -1}\n")
    res = w.check()
    assert res is not None and res.result == "invalid" and "page_max" in (res.error or "")
    assert holder.strategy.version == "2026.03.2" and holder.last.result == "invalid"  # kept
    assert holder.status()["last_reload"]["error"] == res.error
    (cm.root / "..data").unlink()  # the mount vanished
    res = w.check()
    assert res is not None and res.result == "unreadable" and holder.strategy.version == "2026.03.2"
    assert seen == ["ok", "ok", "invalid", "unreadable"]


def test_the_app_applies_a_reloaded_strategy_without_a_restart(
    mongo_store: MongoStore, settings_for: Any, tmp_path: Path
) -> None:
    cm = ConfigMapDir(tmp_path / "cm")
    cm.write(GOOD)
    api = ApiSettings(cache_poll_s=3600.0, strategy_file=str(cm.path), strategy_poll_s=3600.0)
    app = create_app(settings_for(None), mongo=mongo_store, api_settings=api)
    st: AppState = app.state.dm
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        status = c.get("/health/strategy").json()
        assert status["version"] == "2026.03.1" and status["pid"] == os.getpid()
        assert status["strategy"]["limits"]["page_max"] == 1000
        assert c.get("/health/readiness").json()["strategy"]["version"] == "2026.03.1"
        text = c.get("/metrics").text
        assert 'dm_api_strategy_info{digest="' in text and 'version="2026.03.1"' in text
        assert counter(text, "dm_api_strategy_reloads_total", result="ok") == 1

        # the page limit in force
        resp = c.get("/data/candles", params={**PARAMS, "limit": 1001})
        assert resp.status_code == 422 and resp.json()["detail"][0]["loc"] == ["query", "limit"]
        assert "page limit of 1000" in resp.json()["detail"][0]["msg"]

        # caching off for candles: every request reads the store
        assert st._strategy_watcher is not None
        cm.write('version: "2"\ncache: {candles: {level: "off"}}\nrate_limits: {default: "2/minute"}\n')
        assert st._strategy_watcher.check() is not None and st.strategy.version == "2"
        before = store_reads(c)
        for _ in range(3):
            assert c.get("/data/candles", params=PARAMS).status_code == 200
        assert c.get("/metrics").text.count("dm_api_cache_store_reads_total") >= 1
        assert store_reads(c) == before  # reads bypass the cache, none counted as a cache fill
        assert st.hot.get(("candles",), lambda _: False) is None and len(st.hot) == 0

        # per-token rate limits: 2 a minute for a token, anonymous clients unlimited
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert [c.get("/health/strategy", headers=auth).status_code for _ in range(2)] == [200, 200]
        limited = c.get("/health/strategy", headers=auth)
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
        assert f"token {token_id(TOKEN)}" in limited.json()["detail"][0]["msg"]
        assert c.get("/health/strategy").status_code == 200
        assert [c.get("/health/liveness", headers=auth).status_code for _ in range(3)] == [200] * 3  # probes exempt
        assert counter(c.get("/metrics").text, "dm_api_rate_limited_total") == 1

        # an invalid edit keeps "2", and /health and /metrics say so
        cm.write('version: "3"\nlimits: {page_max: "many"}\n')
        assert st._strategy_watcher.check() is not None and st.strategy.version == "2"
        status = c.get("/health/strategy").json()
        assert status["version"] == "2" and status["last_reload"]["result"] == "invalid"
        assert "page_max" in status["last_reload"]["error"]
        text = c.get("/metrics").text
        assert counter(text, "dm_api_strategy_last_reload_ok") == 0
        assert counter(text, "dm_api_strategy_reloads_total", result="invalid") == 1


def test_batch_limits_from_the_strategy_refuse_a_larger_batch(
    mongo_store: MongoStore, settings_for: Any, tmp_path: Path
) -> None:
    path = tmp_path / "strategy.toml"
    path.write_text('version = "b1"\n[limits]\nbatch_records_max = 2\nbatch_operations_max = 1\n')
    api = ApiSettings(strategy_file=str(path), strategy_poll_s=3600.0)
    app = create_app(settings_for(None), mongo=mongo_store, api_settings=api)
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        body = {"database": "mysql", "collection": "positions", "records": [{}, {}, {}]}
        resp = c.post("/api/v1/data/insert", json=body)
        assert resp.status_code == 413 and resp.json()["detail"][0]["loc"] == ["body", "records"]
        assert "batch limit of 2" in resp.json()["detail"][0]["msg"]
        ops = {"operations": [{"type": "delete", "filter": {}}] * 2}
        resp = c.post("/api/v1/mysql/positions/batch", json=ops)
        assert resp.status_code == 413 and "batch limit of 1" in resp.json()["detail"][0]["msg"]


def test_builtin_strategy_follows_the_cache_settings() -> None:
    off = builtin(enabled=False)
    assert all(off.cache_for(d).level == "off" for d in ("candles", "analytics", "trades"))
    on = builtin(enabled=True, ttl_s=5, notified_ttl_s=60)
    assert on.cache_for("candles").l1_ttl_s == 60 and on.cache_for("trades").l1_ttl_s == 5
    assert isinstance(on, Strategy)


def test_the_documented_example_is_a_valid_strategy() -> None:
    path = Path(__file__).resolve().parent.parent / "docs" / "strategy.example.yaml"
    s = parse_strategy(path.read_bytes(), path.name)
    assert s.rate_limits.items_for("0123456789ab")[0].amount == 1000
    assert s.rate_limits.items_for(None)[0].amount == 50 and s.rate_limits.items_for("ffffffffffff")[0].amount == 200


def test_the_kubernetes_strategy_configmap_is_valid() -> None:
    import yaml

    path = Path(__file__).resolve().parent.parent / "deploy" / "k8s" / "api.yaml"
    cm = next(d for d in yaml.safe_load_all(path.read_text()) if d and d["metadata"]["name"] == "dm-api-strategy")
    assert parse_strategy(cm["data"]["strategy.yaml"].encode(), "strategy.yaml").version == "1"


def test_with_redis_a_tokens_rate_holds_across_workers_and_survives_redis_going_away(
    mongo_store: MongoStore, settings_for: Any, tmp_path: Path, own_redis: Any
) -> None:
    path = tmp_path / "strategy.yaml"
    path.write_text('version: r1\nrate_limits: {default: "3/minute"}\n')
    api = ApiSettings(strategy_file=str(path), strategy_poll_s=3600.0, l2_retry_s=0.2)
    settings = settings_for(own_redis.url)
    a = create_app(settings, mongo=mongo_store, api_settings=api)
    b = create_app(settings, mongo=mongo_store, api_settings=api)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with serve(a) as ua, serve(b) as ub, httpx.Client(timeout=30) as c:
        codes = [c.get(f"{u}/health/strategy", headers=auth).status_code for u in (ua, ub, ua, ub)]
        assert codes == [200, 200, 200, 429]  # one count for the token, whichever worker answers
        own_redis.stop()
        # Redis gone: each worker counts in its own memory again; no request fails for it
        assert c.get(f"{ua}/health/strategy", headers=auth).status_code == 200
        assert a.state.dm.limiter.fallbacks == 1


def test_without_redis_each_worker_counts_its_own(mongo_store: MongoStore, settings_for: Any, tmp_path: Path) -> None:
    path = tmp_path / "strategy.yaml"
    path.write_text('version: r1\nrate_limits: {default: "2/minute"}\n')
    api = ApiSettings(strategy_file=str(path), strategy_poll_s=3600.0)
    a = create_app(settings_for(None), mongo=mongo_store, api_settings=api)
    b = create_app(settings_for(None), mongo=mongo_store, api_settings=api)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with serve(a) as ua, serve(b) as ub, httpx.Client(timeout=30) as c:
        codes = [c.get(f"{u}/health/strategy", headers=auth).status_code for u in (ua, ub, ua, ub, ua)]
        assert codes == [200, 200, 200, 200, 429]
