"""``lstm-fn inspect``: its numbers against independent computations, its page in a real
browser, and bad input refused."""

import base64
import io
import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lstm_fn
from conftest import CELLS, assert_close, assert_refused, invoke, listing
from lstm_fn.inspect.analysis import FEATURES, inspect
from lstm_fn.inspect.page import page_data, write_page
from lstm_fn.nn.cells import get_cell
from lstm_fn.nn.model import log_frequencies
from lstm_fn.training.evaluate import score

TEXT = ('First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\n'
        'Speak, speak. (Quietly, "now".)\n\nFirst Citizen:\nYou are all resolved rather '
        'to die than to famish?\n') * 6


def tiny(cell: str, text: str = TEXT, layers: int = 2, hidden: int = 16, seed: int = 0):
    vocab = lstm_fn.Vocab.from_text(text)
    cfg = lstm_fn.ModelConfig(cell, len(vocab), embed_size=8, hidden_size=hidden,
                              num_layers=layers)
    ids = vocab.encode(text)
    params = lstm_fn.init(jax.random.key(seed), cfg,
                          head_bias=log_frequencies(ids, cfg.vocab_size))
    return params, cfg, vocab, ids


def loop_states(params, cfg, ids) -> list[dict]:
    """Every layer's carry after each character, by a plain Python loop of the cell's step."""
    math = get_cell(cfg.cell)
    carries = [math.state(*(jnp.zeros((1, cfg.hidden_size)) for _ in math.state._fields))
               for _ in range(cfg.num_layers)]
    out = [{part: [] for part in math.state._fields} for _ in range(cfg.num_layers)]
    for token in ids:
        x = params["embed"][token][None, :]
        for l, p in enumerate(params["layers"]):
            carries[l], x = math.step(p, carries[l], x @ p["w_x"] + p["b_x"])
            for part, value in carries[l]._asdict().items():
                out[l][part].append(np.asarray(value[0]))
    return [{part: np.stack(values) for part, values in layer.items()} for layer in out]


@pytest.mark.parametrize("cell", CELLS)
def test_surprisal_and_states_match_eval_and_a_loop_of_the_step(cell):
    params, cfg, vocab, ids = tiny(cell)
    result = inspect(params, cfg, ids, vocab.decode(ids), window=32)
    nats = float(np.mean(result.surprisal)) * np.log(2)
    assert_close(nats, score(params, cfg, ids, 1, 64).loss, rtol=1e-5)
    expected = loop_states(params, cfg, ids)
    for l in range(cfg.num_layers):
        assert set(result.states[l]) == set(expected[l])
        for part, values in expected[l].items():
            assert_close(result.states[l][part], values, atol=1e-5)
    # the page's quantised activations decode to the same numbers, within a level
    data = page_data(result, list(vocab.symbols), {"rows": []})
    for l, layer in enumerate(data["layers"]):
        for part, packed in layer["states"].items():
            levels = np.frombuffer(base64.b64decode(packed["data"]), np.int8)
            decoded = levels.reshape(cfg.hidden_size, len(ids)).T * np.array(packed["scale"]) / 127
            np.testing.assert_allclose(decoded, expected[l][part],
                                       atol=max(packed["scale"]) / 127 * 0.51 + 1e-6)


def test_gradient_flow_is_the_backward_pass_of_the_rnn():
    """For a one-layer rnn, dL_T/dh_t by hand: the head's error at the last step, carried
    back through ``tanh`` and ``w_h`` one step at a time."""
    params, cfg, vocab, ids = tiny("rnn", layers=1)
    window = 24
    flow = inspect(params, cfg, ids[:window + 1], None, window=window).gradient_flow
    p = {k: np.asarray(v, np.float64) for k, v in params["layers"][0].items()}
    h, hs = np.zeros(cfg.hidden_size), []
    for token in ids[:window]:
        h = np.tanh(np.asarray(params["embed"][token]) @ p["w_x"] + p["b_x"] + h @ p["w_h"]
                    + p["b_h"])
        hs.append(h)
    logits = hs[-1] @ np.asarray(params["head"]["w"]) + np.asarray(params["head"]["b"])
    error = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    error[ids[window]] -= 1.0
    dh, norms = error @ np.asarray(params["head"]["w"]).T, []
    for t in range(window - 1, -1, -1):
        norms.append(np.linalg.norm(dh))
        dh = (dh * (1.0 - hs[t] ** 2)) @ p["w_h"].T
    assert_close(flow, norms, rtol=1e-4, atol=1e-7)


def test_a_planted_unit_ranks_first_for_its_feature():
    """Unit 5 of layer 0 reads only whether the character is upper case (its own input
    weights, nothing recurrent): it is the best match for "upper case", not another."""
    params, cfg, vocab, ids = tiny("rnn", layers=2)
    unit, upper = 5, np.array([s.isupper() for s in vocab.symbols])
    layer = dict(params["layers"][0])
    embed = params["embed"].at[:, 0].set(np.where(upper, 1.0, -1.0))
    w_x = layer["w_x"].at[0, :].set(0.0).at[:, unit].set(0.0).at[0, unit].set(4.0)
    layer.update(w_x=w_x, w_h=layer["w_h"].at[:, unit].set(0.0).at[unit, :].set(0.0),
                 b_x=layer["b_x"].at[unit].set(0.0), b_h=layer["b_h"].at[unit].set(0.0))
    params = {**params, "embed": embed, "layers": [layer, *params["layers"][1:]]}
    result = inspect(params, cfg, ids, vocab.decode(ids), window=16)
    f = FEATURES.index("upper case")
    ranked = sorted(((abs(r[u, f]), l, u) for l, layer in enumerate(result.correlations)
                     for r in layer.values() for u in range(cfg.hidden_size)), reverse=True)
    assert ranked[0][1:] == (0, unit)
    assert ranked[0][0] > 0.99 > ranked[1][0]


# -------------------------------------------------------------------------------- the CLI

@pytest.fixture(scope="module")
def lstm_model(tmp_path_factory):
    params, cfg, vocab, _ = tiny("lstm")
    path = tmp_path_factory.mktemp("inspect") / "model.json"
    lstm_fn.save_weights(path, params, cfg, vocab)
    return path


@pytest.fixture(scope="module")
def page(tmp_path_factory, lstm_model):
    folder = tmp_path_factory.mktemp("page")
    (folder / "text.txt").write_text(TEXT, encoding="utf-8")
    result = invoke("inspect", folder / "text.txt", "--from", lstm_model, "--out",
                    folder / "page.html", "--png", folder / "png", "--npz", folder / "a.npz",
                    "--window", "32")
    assert result.exit_code == 0, result.output
    return folder, result.stdout


def test_inspect_writes_a_page_charts_and_arrays(page, lstm_model):
    folder, stdout = page
    text = (folder / "page.html").read_text(encoding="utf-8")
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in text and "<link" not in text  # nothing fetched
    data = json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>',
                                text, re.S).group(1).replace("<\\/", "</"))
    assert len(data["ids"]) == len(TEXT) and len(data["layers"]) == 2
    assert sorted(data["layers"][0]["saturation"]) == ["f", "i", "o"]
    loss = float(re.search(r"\(([\d.]+) nats\)", stdout).group(1))
    evaluated = invoke("eval", folder / "text.txt", "--from", lstm_model, "--batch-size", "1")
    assert f"loss {loss:.4f} nats/char" in evaluated.stdout
    pngs = sorted(p.name for p in (folder / "png").iterdir())
    assert pngs == ["gates.png", "gradient_flow.png", "surprisal.png", "units.png"]
    for name in pngs:
        assert (folder / "png" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    arrays = np.load(folder / "a.npz")
    assert arrays["surprisal"].shape == (len(TEXT) - 1,)
    assert arrays["L0/c"].shape == (len(TEXT), 16)


def test_a_long_text_is_cut_with_a_note(tmp_path, lstm_model):
    result = invoke("inspect", "--text", TEXT, "--from", lstm_model, "--chars", "100",
                    "--out", tmp_path / "p.html", "--layer", "1")
    assert result.exit_code == 0, result.output
    text = (tmp_path / "p.html").read_text(encoding="utf-8")
    assert "--chars reads more" in text and "1 only" in text
    assert "99 characters predicted" in result.stdout


@pytest.mark.parametrize("args, needles", [
    (["--text", ""], ["0 character(s)"]),
    (["--text", "hello \u00e9\u00e8"], ["not in the vocabulary", "'\u00e9'"]),
    (["--text", "hear me", "--layer", "2"], ["--layer 2", "2 layer(s)"]),
    ([], ["TEXT_FILE or --text"]),
])
def test_bad_input_is_refused_and_nothing_is_written(tmp_path, lstm_model, args, needles):
    result = invoke("inspect", *args, "--from", lstm_model, "--out", tmp_path / "p.html")
    assert_refused(result, *needles)
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_out_is_refused(tmp_path, lstm_model):
    """--out below a file (a folder that cannot exist): one line, nothing written."""
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    before = listing(tmp_path)
    result = invoke("inspect", "--text", "hear me", "--from", lstm_model,
                    "--out", tmp_path / "notes.txt" / "p.html", "--png", tmp_path / "png")
    assert_refused(result, "cannot create the output folder", "notes.txt")
    assert listing(tmp_path) == before

# ----------------------------------------------------------------------- a real browser

def chromium():
    """A Selenium driver of headless Chromium; skips (or fails, where
    LSTM_FN_REQUIRE_BROWSER is set, as in .ci/run) when there is none."""
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    try:
        from selenium import webdriver
    except ImportError:
        missing.append("the selenium package")
    if missing:
        reason = (f"no browser to test the page in: {', '.join(missing)} missing (Debian: "
                  "apt-get install chromium chromium-driver; pip install selenium)")
        if os.environ.get("LSTM_FN_REQUIRE_BROWSER"):
            pytest.fail(reason)
        pytest.skip(reason)
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1200,1600"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))


@pytest.fixture(scope="module")
def browser():
    driver = chromium()
    yield driver
    driver.quit()


def test_the_page_works_in_chromium(page, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    folder, _ = page
    browser.get((folder / "page.html").as_uri())
    WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    # all four panels are filled
    assert len(browser.find_elements(By.CSS_SELECTOR, "#surprise-text span")) == len(TEXT)
    assert browser.find_elements(By.CSS_SELECTOR, "#ranking a.unit")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#gate-plots svg circle")) == 2 * 3 * 16
    assert browser.find_elements(By.CSS_SELECTOR, "#flow-plot svg polyline")

    def colours():
        return browser.execute_script(
            "return [...document.querySelectorAll('#cell-text span')].slice(0, 200)"
            ".map(s => s.style.backgroundColor)")

    before = colours()
    browser.find_element(By.TAG_NAME, "body").send_keys("j")  # the next unit, by keyboard
    after_key = colours()
    assert after_key != before
    assert browser.find_element(By.ID, "unit").get_attribute("value") == "1"
    link = browser.find_elements(By.CSS_SELECTOR, "#ranking a.unit")[0]
    unit = link.get_attribute("data-unit")
    browser.execute_script("arguments[0].click()", link)
    assert browser.find_element(By.ID, "unit").get_attribute("value") == unit
    assert browser.find_element(By.ID, "layer").get_attribute("value") == \
        link.get_attribute("data-layer")
    # hovering a character shows what the model expected there
    browser.execute_script("document.getElementById('surprise').scrollIntoView()")
    span = browser.find_elements(By.CSS_SELECTOR, "#surprise-text span")[7]
    ActionChains(browser).move_to_element(span).perform()
    tip = browser.find_element(By.ID, "tip")
    assert tip.is_displayed() and "expected:" in tip.text and "%" in tip.text
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    # a screenshot is a picture, not a blank page
    import matplotlib.image

    pixels = matplotlib.image.imread(io.BytesIO(browser.get_screenshot_as_png()), format="png")
    rgb = pixels[..., :3].reshape(-1, 3)
    assert (rgb.min(axis=1) < 0.9).mean() > 0.02
    assert len(np.unique((rgb * 255).astype(np.uint8), axis=0)) > 50


def test_a_page_of_every_cell_loads_without_errors(tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    for cell in CELLS:
        params, cfg, vocab, ids = tiny(cell, layers=1)
        result = inspect(params, cfg, ids[:300], vocab.decode(ids[:300]), window=16)
        path = tmp_path / f"{cell}.html"
        path.write_text(write_page(result, list(vocab.symbols),
                                   {"source": "<b>&</b>", "rows": [["cell", cell]]}),
                        encoding="utf-8")
        browser.get(path.as_uri())
        WebDriverWait(browser, 30).until(
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
        assert "<b>&</b>" in browser.find_element(By.TAG_NAME, "h1").text
        gate_text = browser.find_element(By.ID, "gate-reading").text
        assert ("no gates" in gate_text) == (cell == "rnn")
