"""The pages' files ship inside the package and reach nothing outside the server."""

from __future__ import annotations

import re
import tomllib
from importlib import resources
from pathlib import Path

import httpx

_ASSET_REF = re.compile(r"""(?:src|href)=["'](/ui/[^"']+)["']""")


def _assets() -> dict[str, str]:
    folder = resources.files("pagoda.server") / "static"
    return {f.name: f.read_text() for f in folder.iterdir() if f.is_file()}


def test_assets_are_package_data_and_refer_to_nothing_external() -> None:
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert "static/*" in pyproject["tool"]["setuptools"]["package-data"]["pagoda.server"]
    assets = _assets()
    assert {"index.html", "dashboard.html", "common.js", "chat.js", "dashboard.js", "style.css"} <= set(assets)
    for name, text in assets.items():
        assert not re.search(r"https?://|//cdn|@import", text), f"{name} refers to something outside the server"


def test_every_referenced_file_is_served(server) -> None:
    assets = _assets()
    for page in ("/", "/dashboard"):
        html = httpx.get(server.url + page, timeout=10)
        assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
        refs = _ASSET_REF.findall(html.text)
        assert refs
        for ref in refs:
            r = httpx.get(server.url + ref, timeout=10)
            assert r.status_code == 200 and r.text == assets[ref.removeprefix("/ui/")]
    assert httpx.get(server.url + "/ui/../app.py", timeout=10).status_code == 404
    assert httpx.get(server.url + "/ui/nothing.js", timeout=10).json()["error"]["code"] == "not_found"
    config = httpx.get(server.url + "/ui/config.json", timeout=10).json()
    assert config == {"auth_required": False, "image_model": False, "samplers": [], "max_updates_per_s": 10.0}
    assert httpx.get(server.urls["keyed"] + "/ui/config.json", timeout=10).json()["auth_required"] is True


def test_serve_has_a_no_web_ui_switch() -> None:
    import argparse

    from pagoda.cli import serve
    from pagoda.server.config import ServerConfig

    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    assert parser.parse_args([]).web_ui is ServerConfig.web_ui is True
    assert parser.parse_args(["--no-web-ui"]).web_ui is False
