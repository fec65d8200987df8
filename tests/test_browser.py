"""The notebooks as a class sees them: JupyterLab in headless Chromium.

One JupyterLab server (127.0.0.1, a random token, config / runtime / settings folders under tmp)
serves copies of the notebooks; Debian's ``chromium`` is driven through ``chromedriver`` (selenium).

- ``make html``'s export of the committed 01 renders its formulas offline (local MathJax);
- notebook 02, at small parameters (papermill ``--prepare-only`` writes the parameterised copy), is
  run top to bottom in the browser: the colour-by selector renders as a real control, and choosing
  another finding redraws the figure;
- the committed 01 renders its stored figures; the committed 02 shows its control from the saved
  widget state without running anything;
- opening the notebook ``notebooks/build.py`` writes, letting its kernel start and saving it
  (Ctrl+S) changes neither file of the pair: nothing marks it modified.

Screenshots go to ``tests/artifacts/`` (git-ignored). Without Chromium, its driver or selenium the
tests skip with the reason (``make test`` installs Chromium with apt-get where it can).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
if CHROMIUM is None or DRIVER is None:
    pytest.skip("Chromium or chromedriver not installed (Debian: apt-get install chromium "
                "chromium-driver; `make test` installs them when run as root)",
                allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed: pip "
                                "install -e '.[test]'")
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

# a few pretraining steps and few images: the browser run takes about a minute
SMALL = {"data_length": 32, "epochs": 1, "batch_size": 16, "eval_length": 60}
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1000"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on 127.0.0.1 with fresh Jupyter folders; yields (base url, token,
    served folder, its environment)."""
    home = tmp_path_factory.mktemp("lab")
    served = home / "notebooks"
    served.mkdir()
    token = secrets.token_hex(16)
    port = _free_port()
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "config"),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "IPYTHONDIR": str(home / "ipython"),
           "JUPYTER_DATA_DIR": str(home / "data"),  # the notebook signatures (trust) too
           "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH"))
                                         if p)}
    # no "get notified about Jupyter news?" toast over the page (nothing is fetched offline anyway)
    notes = home / "settings" / "@jupyterlab" / "apputils-extension"
    notes.mkdir(parents=True)
    (notes / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    log = open(home / "lab.log", "w")  # noqa: SIM115 (closed after the server stops)
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={served}",
         "--allow-root", "--LabApp.news_url=",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, cwd=served, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError((home / "lab.log").read_text())
                time.sleep(0.5)
        else:
            raise RuntimeError("JupyterLab did not answer in 60 s:\n" + (home / "lab.log").read_text())
        yield url, token, served, env
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="mlvicx-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    from selenium.webdriver.chrome.service import Service

    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def shot(driver, name: str) -> None:
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def open_notebook(driver, lab, name: str):
    """Open ``name`` alone (``?reset``: no tabs restored from an earlier test)."""
    url, token = lab[:2]
    driver.get(f"{url}/lab/tree/{name}?reset&token={token}")
    wait = WebDriverWait(driver, 120)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-Cell"))
    return wait


def kernel_state(lab, name: str) -> str | None:
    """The execution state of the kernel of notebook ``name`` (JupyterLab's sessions API)."""
    url, token = lab[:2]
    with urllib.request.urlopen(f"{url}/api/sessions?token={token}", timeout=10) as r:
        sessions = json.load(r)
    states = [s["kernel"]["execution_state"] for s in sessions
              if s.get("path") == name and s.get("kernel")]
    return states[0] if states else None


def wait_idle(lab, name: str, timeout: float, settle: float = 3.0) -> None:
    """Until the notebook's kernel has been idle for ``settle`` seconds."""
    end, since = time.monotonic() + timeout, None
    while time.monotonic() < end:
        if kernel_state(lab, name) == "idle":
            since = since or time.monotonic()
            if time.monotonic() - since >= settle:
                return
        else:
            since = None
        time.sleep(0.5)
    raise TimeoutError(f"{name}: kernel not idle after {timeout} s")


def current_tab_dirty(driver) -> bool:
    return bool(driver.execute_script("""
        const tab = document.querySelector('#jp-main-dock-panel .lm-TabBar-tab.jp-mod-current');
        return tab ? tab.classList.contains('jp-mod-dirty') : null;"""))


def restart_and_run_all(driver) -> None:
    driver.find_element(By.CSS_SELECTOR, "jp-button[data-command='notebook:restart-run-all']").click()
    WebDriverWait(driver, 30).until(lambda d: d.find_element(
        By.CSS_SELECTOR, ".jp-Dialog .jp-mod-accept")).click()


def scroll_down(driver) -> None:
    """Scroll the notebook to its end (JupyterLab renders cells only as they come into view)."""
    driver.execute_script("""
        for (const el of document.querySelectorAll('.jp-NotebookPanel .jp-WindowedPanel-outer'))
            el.scrollTop = el.scrollHeight;""")


def stderr_tracebacks(driver) -> list[str]:
    return [e.text for e in driver.find_elements(
        By.CSS_SELECTOR, ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        if "Traceback" in e.text or "Error" in e.text]


def dropdown_image(driver) -> str | None:
    return driver.execute_script("""
        const sel = document.querySelector('.jp-NotebookPanel .widget-dropdown select');
        const box = sel && sel.closest('.widget-vbox');
        const img = box && box.querySelector('.widget-output img');
        return img ? img.getAttribute('src') : null;""")


def test_02_selector_renders_and_recolours(lab, browser):
    served = lab[2]
    papermill = pytest.importorskip("papermill")
    papermill.execute_notebook(str(NOTEBOOKS / "02_embeddings_umap.ipynb"),
                               str(served / "02_small.ipynb"), prepare_only=True,
                               parameters={**SMALL, "out_dir": str(served / "runs")})
    wait = open_notebook(browser, lab, "02_small.ipynb")
    wait_idle(lab, "02_small.ipynb", 180)
    restart_and_run_all(browser)
    time.sleep(5)
    try:
        wait_idle(lab, "02_small.ipynb", 600, settle=5)
    finally:
        shot(browser, "02_after_run_all")
    assert not stderr_tracebacks(browser)
    def control(d):
        scroll_down(d)
        return d.find_element(By.CSS_SELECTOR, ".widget-dropdown select")
    select = wait.until(control)
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", select)
    label = browser.find_element(By.CSS_SELECTOR, ".widget-dropdown label").text
    assert label == "colour by" and select.is_displayed()
    before = WebDriverWait(browser, 60).until(dropdown_image)
    shot(browser, "02_selector_effusion")
    Select(select).select_by_visible_text("nodule")
    WebDriverWait(browser, 120).until(lambda d: (dropdown_image(d) or before) != before)
    shot(browser, "02_selector_nodule")


def test_committed_01_shows_its_figures(lab, browser):
    served = lab[2]
    for suffix in (".ipynb", ".py"):
        shutil.copy2(NOTEBOOKS / f"01_pretraining{suffix}", served)
    open_notebook(browser, lab, "01_pretraining.ipynb")
    stored = sum("image/png" in o.get("data", {}) for c in nbformat.read(
        NOTEBOOKS / "01_pretraining.ipynb", as_version=4).cells for o in c.get("outputs", []))
    assert stored >= 3

    def loaded(d):
        return d.execute_script("""
            return Array.from(document.querySelectorAll(
                '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output img'))
                .filter(i => i.complete && i.naturalWidth > 100).length;""")
    WebDriverWait(browser, 60).until(lambda d: loaded(d) >= stored)
    shot(browser, "01_committed")


def test_committed_02_shows_its_control_without_a_run(lab, browser):
    served = lab[2]
    for suffix in (".ipynb", ".py"):
        shutil.copy2(NOTEBOOKS / f"02_embeddings_umap{suffix}", served)
    # JupyterLab renders widgets only in a trusted notebook (a reader trusts it, or saves it)
    subprocess.run([sys.executable, "-m", "jupyter", "trust", "02_embeddings_umap.ipynb"],
                   cwd=served, env=lab[3], check=True, capture_output=True)
    open_notebook(browser, lab, "02_embeddings_umap.ipynb")

    def control(d):
        scroll_down(d)
        return d.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel .widget-dropdown select")
    try:
        (select,) = WebDriverWait(browser, 60).until(control)
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", select)
        assert select.is_displayed()
        assert Select(select).first_selected_option.text == "effusion"
        # the figure the widget held at the end of the run is in its saved state too
        assert WebDriverWait(browser, 30).until(dropdown_image)
    finally:
        shot(browser, "02_committed")


def test_html_export_renders_formulas_offline(browser, tmp_path):
    """``make html``'s pages of the committed 01 (the most formulas): MathJax typesets them from
    the local copy, and no script comes from the network."""
    sys.path.insert(0, str(NOTEBOOKS))
    try:
        import export_html
    finally:
        sys.path.remove(str(NOTEBOOKS))
    if export_html.find_mathjax() is None:
        pytest.skip("MathJax 2 not installed (Debian: apt-get install libjs-mathjax; make test "
                    "installs it when run as root)")
    (page,) = export_html.export(["01_pretraining"], tmp_path / "html")
    text = page.read_text(encoding="utf-8")
    scripts = [s for s in text.split("<script")[1:] if 'src="http' in s.split(">")[0]]
    assert not scripts, f"scripts from the network: {scripts}"
    browser.get(page.as_uri())
    typeset = WebDriverWait(browser, 60).until(lambda d: d.execute_script(
        "return document.querySelectorAll('.MathJax_CHTML').length"))
    assert typeset >= 10
    assert "$$" not in browser.execute_script("return document.body.innerText")
    shot(browser, "01_html_export")


def test_open_and_save_changes_nothing(lab, browser):
    """The pair build.py writes (metadata as after a run), opened, kernel started, saved."""
    from ipykernel.ipkernel import IPythonKernel

    served = lab[2]
    sys.path.insert(0, str(NOTEBOOKS))
    try:
        import build
    finally:
        sys.path.remove(str(NOTEBOOKS))
    name = "03_linear_probe"
    nb = build.source_notebook(name)
    nb.metadata["language_info"] = dict(IPythonKernel.language_info)  # what the kernel reports
    nb = build.clean(nb, name)
    folder = served / "saved"
    folder.mkdir()
    shutil.copy2(NOTEBOOKS / f"{name}.py", folder)
    nbformat.write(nb, folder / f"{name}.ipynb")
    files = [folder / f"{name}.ipynb", folder / f"{name}.py"]
    before = [f.read_bytes() for f in files]
    open_notebook(browser, lab, f"saved/{name}.ipynb")
    wait_idle(lab, f"saved/{name}.ipynb", 180)
    time.sleep(2)  # let the frontend apply what the kernel reported
    shot(browser, "03_opened")
    assert not current_tab_dirty(browser), "opening the notebook marked it modified"
    mtime = files[0].stat().st_mtime_ns
    browser.find_element(By.CSS_SELECTOR, ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook").click()
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.CONTROL, "s")
    # the save happened when the file was written again (same bytes or not)
    WebDriverWait(browser, 30).until(lambda d: files[0].stat().st_mtime_ns != mtime)
    time.sleep(1)  # the paired .py is written right after
    for f, old in zip(files, before):
        assert f.read_bytes() == old, f"saving in JupyterLab rewrote {f.name}"
