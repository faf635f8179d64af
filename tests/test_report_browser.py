"""The report of real sweeps, opened in headless Chromium (Debian's ``chromium``; ``.ci/chromium.sh`` installs it).

The page runs its own self-test when opened with ``#selftest`` (static/selftest.js):
it checks that every figure rendered, unticks a recipe in the filter bar and
checks that figures and table lose exactly that recipe's runs, ticks it again,
and sorts the table both ways; it writes the results into the page, which
``chromium --dump-dom`` prints. Any script error (caught by the page, or
printed by Chromium as an uncaught console error) fails the test.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from snnexp import report
from tests.test_report import report_runs

CHROMIUM = shutil.which("chromium")
pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (.ci/chromium.sh installs it)")]


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    return report_runs(tmp_path_factory)


def chromium(url: str, profile: Path, *args: str, budget_ms: int = 20000) -> subprocess.CompletedProcess:
    """Run headless Chromium on ``url`` with no network (every host name resolves to nothing)."""
    return subprocess.run(
        [CHROMIUM, "--headless=new", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", "--no-first-run",
         "--enable-logging=stderr", "--v=0", f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND",
         f"--virtual-time-budget={budget_ms}", *args, url],
        capture_output=True, text=True, timeout=180)


def selftest(page: Path, profile: Path) -> tuple[dict, list[str]]:
    """The page's self-test results and Chromium's console lines."""
    done = chromium(page.resolve().as_uri() + "#selftest", profile, "--dump-dom")
    assert done.returncode == 0, done.stderr[-3000:]
    found = list(re.finditer(r'<pre id="selftest-result">(.*?)</pre>', done.stdout, re.S))
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert found, f"the self-test wrote no result; console: {console}"
    text = html.unescape(found[-1].group(1))
    try:
        return json.loads(text), console
    except ValueError as e:
        raise AssertionError(f"self-test result is not JSON ({e}): {text[:2000]}") from e


def _check(result: dict, console: list[str], expected_plots: set[str]) -> None:
    assert result["errors"] == [], result["errors"]
    assert not [c for c in console if "Uncaught" in c or "Error" in c], console
    plots = {p["id"]: p for p in result["plots"]}
    assert set(plots) == expected_plots
    assert all(p["rendered"] for p in plots.values()), plots
    assert plots["fig-pareto"]["svg_points"] >= plots["fig-pareto"]["points"] > 0
    f = result["filter"]
    assert f["rows_after"] < f["rows_before"] and f["leaked"] == 0
    assert f["rows_restored"] == f["rows_before"]
    assert 0 < f["pareto_after"] < f["pareto_before"] == f["pareto_restored"]
    assert f["pareto_front_after"] >= 1
    assert f"{f['rows_after']} of {f['rows_before']} runs shown" == f["shown_text"]
    s = result["sort"]
    assert s["n"] > 1 and s["ascending"] and s["descending"] and s["first_desc"] >= s["last_desc"]


def test_report_in_chromium(runs_root, tmp_path):
    report.build_report([runs_root], tmp_path)
    result, console = selftest(tmp_path / "report.html", tmp_path / "profile")
    _check(result, console, {"fig-pareto", "fig-energy", "fig-parallel", "fig-importance", "fig-drop",
                             "fig-curves", "fig-seeds", "fig-optuna-1-history", "fig-optuna-1-params"})
    f = result["filter"]
    assert f["recipe"] == "fp32" and f["heat_rows_after"] == f["heat_rows_before"] - 1
    shot = tmp_path / "report.png"
    chromium((tmp_path / "report.html").resolve().as_uri(), tmp_path / "profile", "--window-size=1400,3000",
             f"--screenshot={shot}")
    assert shot.stat().st_size > 50_000  # a page with figures, not a blank one


def test_compare_in_chromium(runs_root, tmp_path):
    report.build_report([runs_root / "sweep", runs_root / "seed1"], tmp_path, labels=["before", "after"])
    result, console = selftest(tmp_path / "report.html", tmp_path / "profile")
    _check(result, console, {"fig-pareto", "fig-energy", "fig-parallel", "fig-importance", "fig-drop",
                             "fig-curves"})  # no configuration repeats within one source: no seed view


def test_watching_page_reloads_and_keeps_the_filter(runs_root, tmp_path):
    report.build_report([runs_root / "sweep"], tmp_path, refresh_s=2)
    html = (tmp_path / "report.html").read_text()
    assert 'data-refresh="2' in html
    # the self-test unticks the last mode, waits for the reload, then runs on the reloaded page
    result, console = selftest(tmp_path / "report.html", tmp_path / "profile")
    assert result["errors"] == [] and not [c for c in console if "Uncaught" in c], (result, console)
    assert result["reloads"] == 1
    assert result["restored"]["mode"] == ["qat"] and result["restored"]["recipe"] == ["fp32", "w8a8"]
    assert all(p["rendered"] for p in result["plots"])
    assert result["filter"]["shown_text"] == f"{result['filter']['rows_after']} of 4 runs shown"
