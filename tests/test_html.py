"""The HTML report shows the evidence, and a real browser renders it: headless Chromium takes a screenshot of each
page, a probe script records every error, blocked load and picture that did not decode, and counts the pictures and
charts each section must hold. Pages: the bundled example's scan (a patch) and its repair through the CLI with a test
set, a clean zoo model, zoo models flagged by the Fourier probe and the corruption probe, a graph-tampered model
with hostile node names, and a binary classifier that is not assessed.

The evidence itself (auditor/detect/evidence.py) is checked against the model: each example's classes are what
onnxruntime says for the pictured sample, clean and with the trigger."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import zoo_samples
from builders import make_model, save
from onnx import TensorProto, helper, numpy_helper
from test_cli import invoke

import auditor
from auditor.report.html import POLICY, png
from bench import tampering

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "models" / "example"
HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)>"
# The probe: errors, blocked loads (the page's own policy stays, with inline scripts allowed for this script only),
# pictures that did not decode, and how many elements match each selector.
SELECTORS = ("#verdict", "#evidence img.trigger", "#evidence img.before", "#evidence img.after", "svg.probe-chart",
             "svg.probe-chart rect.bar", "svg.probe-chart line.threshold", "svg.eval-chart", "svg.eval-chart rect.bar",
             "#repair img.repair-pic", "#findings tr", "svg.hist", "img", "script")
PROBE = """<script>
window.__errors = [];
window.addEventListener('error', e => __errors.push('error ' + (e.message || (e.target && e.target.tagName) || '?')), true);
document.addEventListener('securitypolicyviolation', e => __errors.push('blocked ' + e.violatedDirective + ' ' + e.blockedURI));
window.addEventListener('load', () => {
  const images = Array.from(document.images);
  const counts = {};
  for (const s of SELECTORS) counts[s] = document.querySelectorAll(s).length;
  const out = document.createElement('pre');
  out.id = 'probe-result';
  out.textContent = JSON.stringify({errors: __errors, counts: counts,
    undecoded: images.filter(i => !(i.complete && i.naturalWidth > 0)).length});
  document.body.appendChild(out);
});
</script>""".replace("SELECTORS", json.dumps(list(SELECTORS)))


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: install Debian's chromium package (apt-get install chromium) "
                        "for the HTML report tests")
        pytest.skip("chromium is not installed")
    return found


def _render(browser: str, page: Path, shot: Path) -> dict:
    """Screenshot `page` and return what the probe recorded on a copy of it."""
    text = page.read_text()
    assert f"content=\"{POLICY}\"" in text  # the page's own policy: no network, no script
    probed = page.with_suffix(".probe.html")
    probed.write_text(text.replace(POLICY, POLICY + "; script-src 'unsafe-inline'", 1)
                      .replace("<meta charset='utf-8'>", "<meta charset='utf-8'>" + PROBE, 1))
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--dump-dom",
                           f"--screenshot={shot}", "--window-size=1280,2400", probed.as_uri()],
                          capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe-result">(.*?)</pre>', done.stdout)
    assert found is not None, f"the probe did not run on {page.name}: {done.stderr[-2000:]}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def _binary(folder: Path) -> tuple[Path, Path]:
    """A logistic model over 6 tabular features: two classes, so no behavioural verdict (not assessed)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(6, 8)).astype(np.float32), "W0"),
             numpy_helper.from_array(rng.normal(size=(8, 1)).astype(np.float32), "W1")]
    nodes = [helper.make_node("MatMul", ["x", "W0"], ["m0"], name="fc1"), helper.make_node("Relu", ["m0"], ["r0"], name="relu"),
             helper.make_node("MatMul", ["r0", "W1"], ["m1"], name="fc2"), helper.make_node("Sigmoid", ["m1"], ["p"], name="sigmoid")]
    graph = helper.make_graph(nodes, "binary", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 1])], inits)
    np.savez(folder / "binary-clean.npz", x=rng.normal(size=(40, 6)).astype(np.float32))
    return save(make_model(graph), folder / "binary.onnx"), folder / "binary-clean.npz"


def _tampered(folder: Path) -> tuple[Path, Path]:
    """The zoo's clean CNN with ShadowLogic's Where branch added, its Slice named with markup."""
    proto = tampering.build("where", onnx.load(str(tampering.ZOO / f"{tampering.BASE}.onnx")))
    for node in proto.graph.node:
        if node.name == "t_slice":
            node.name = HOSTILE
    path = folder / "tampered.onnx"
    onnx.save(proto, str(path))
    with np.load(tampering.ZOO / "data" / "fashion-mnist-clean.npz") as archive:
        np.savez(folder / "tampered-clean.npz", x=archive["x"][:10])
    return path, folder / "tampered-clean.npz"


def _zoo(name: str, folder: Path) -> tuple[Path, Path]:
    return zoo_samples.ZOO / f"{name}.onnx", zoo_samples.clean(zoo_samples.MANIFEST[name], folder)


class Page(NamedTuple):
    report: auditor.Report | None  # None: written by the CLI
    html: Path
    shot: Path  # its screenshot
    probed: dict  # what the probe recorded


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict[str, Page]:
    """Every page, rendered here once (Chromium's start is slow)."""
    browser = _chromium()
    folder = tmp_path_factory.mktemp("html")
    reports: dict[str, auditor.Report | None] = {
        "example": auditor.audit(EXAMPLE / "model.onnx", EXAMPLE / "clean.npz", limit=10, device="cpu"),
        "clean": auditor.audit(*_zoo("cnn_bn-fmnist-clean-s0", folder), device="cpu"),
        "fourier": auditor.audit(*_zoo("cnn_bn_folded-fmnist-sig-s1", folder), device="cpu"),
        "corruption": auditor.audit(*_zoo("cnn-mnist-sig-s1", folder), device="cpu"),
        "tampered": auditor.audit(*_tampered(folder), device="cpu"),
        "binary": auditor.audit(*_binary(folder), device="cpu"),
    }
    for name, report in reports.items():
        (folder / f"{name}.html").write_text(report.to_html())
    result = invoke("repair", EXAMPLE / "model.onnx", "--data", EXAMPLE / "clean.npz", "--limit", 10, "-o", folder / "repaired.onnx",
                    "--test", EXAMPLE / "test.npz", "--triggered", EXAMPLE / "triggered.npz", "--target", 0, "--device", "cpu",
                    "--html", folder / "repair.html", "--json", folder / "repair.json")
    assert result.exit_code == 0, result.output
    reports["repair"] = None
    # a control: a page that loads from the network and holds a picture that does not decode must be caught
    broken = (folder / "example.html").read_text().replace(
        "<main>", "<main><img src='https://example.com/x.png'><img src='data:image/png;base64,AAAA'>", 1)
    (folder / "broken.html").write_text(broken)
    reports["broken"] = None
    return {name: Page(report, folder / f"{name}.html", folder / f"{name}.png",
                       _render(browser, folder / f"{name}.html", folder / f"{name}.png"))
            for name, report in reports.items()}


def _screenshot_ok(shot: Path) -> None:
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a blank 1280x2400 page compresses to a few kB
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1280, 2400)


@pytest.mark.parametrize("name", ["example", "clean", "fourier", "corruption", "tampered", "binary", "repair"])
def test_every_page_renders_without_errors(pages, name: str) -> None:
    _, _, shot, probed = pages[name]
    _screenshot_ok(shot)
    assert probed["errors"] == [] and probed["undecoded"] == 0
    counts = probed["counts"]
    assert counts["#verdict"] == 1 and counts["script"] == 1  # the probe's own: the page has none
    assert counts["svg.hist"] >= 1  # one channel-score histogram per scored layer


def test_the_probe_catches_a_network_load_and_a_broken_picture(pages) -> None:
    _, _, shot, probed = pages["broken"]
    _screenshot_ok(shot)
    assert any(e.startswith("blocked img-src https://example.com/x.png") for e in probed["errors"])
    assert probed["undecoded"] == 2


def _evidence_counts(counts: dict, pattern: int, examples: int) -> None:
    assert counts["#evidence img.trigger"] == pattern
    assert counts["#evidence img.before"] == counts["#evidence img.after"] == examples


@pytest.mark.parametrize("name,kind,pattern", [("example", "patch", 1), ("clean", "patch", 1), ("fourier", "fourier", 1),
                                               ("corruption", "corruption", 0), ("tampered", "graph", 0)])
def test_the_found_trigger_is_shown_on_three_samples(pages, name: str, kind: str, pattern: int) -> None:
    report, _, _, probed = pages[name]
    assert report.evidence is not None and report.evidence.kind == kind
    _evidence_counts(probed["counts"], pattern, 3)
    shares = report.verdict.probe.shares
    corruptions = auditor.Settings().probe
    assert probed["counts"]["svg.probe-chart rect.bar"] == len(shares) == (
        len(corruptions.noise_levels) + len(corruptions.blend_levels) + len(corruptions.blur_sigmas))
    assert probed["counts"]["svg.probe-chart line.threshold"] == 1
    assert probed["counts"]["img"] == pattern + 6  # nothing else: no repair on a scan
    document = json.loads(report.to_json())
    assert document["schema"] == "auditor.report/16"
    assert document["evidence"] == {"kind": kind, "caption": report.evidence.caption,
                                    "examples": [{"sample": e.sample, "before": e.before, "after": e.after}
                                                 for e in report.evidence.examples]}


def test_a_backdoor_s_trigger_flips_the_samples_and_a_clean_model_s_does_not_all(pages) -> None:
    for name in ("example", "fourier", "corruption", "tampered"):
        report = pages[name].report
        assert report.verdict.suspicious
        assert all(e.after == report.verdict.target != e.before for e in report.evidence.examples), name
    clean = pages["clean"].report
    assert not clean.verdict.suspicious and clean.evidence.caption.startswith("Clean verdict")
    assert clean.verdict.patch is not None and clean.evidence.examples[0].before != clean.verdict.patch.target


def test_each_example_is_what_the_model_says_on_the_pictured_samples(pages) -> None:
    """The pictures are the samples: the clean picture is sample `e.sample` of the clean set, and the model's class on
    the pictured trigger (the patch pasted, read back from the picture's 0-255 values) is `e.after`."""
    report = pages["example"].report
    with np.load(EXAMPLE / "clean.npz") as archive:
        x = archive["x"][:10].astype(np.float32) / 255.0
    session = ort.InferenceSession(str(EXAMPLE / "model.onnx"), providers=["CPUExecutionProvider"])
    found = report.verdict.patch
    size = found.pixels.shape[0]
    for e in report.evidence.examples:
        assert np.array_equal(e.image_before[..., 0], np.round(x[e.sample, 0] * 255).astype(np.uint8))
        pasted = x[e.sample:e.sample + 1].copy()
        pasted[0, :, found.row:found.row + size, found.column:found.column + size] = found.pixels.transpose(2, 0, 1)
        assert np.array_equal(e.image_after[..., 0], np.round(pasted[0, 0] * 255).astype(np.uint8))
        assert int(session.run(None, {"x": x[e.sample:e.sample + 1]})[0].argmax()) == e.before
        assert int(session.run(None, {"x": pasted})[0].argmax()) == e.after


def test_the_graph_page_names_its_nodes_escaped(pages) -> None:
    report, _, _, probed = pages["tampered"]
    page = report.to_html()
    assert HOSTILE not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert probed["counts"]["#findings tr"] == 2 and probed["counts"]["script"] == 1
    assert report.evidence.examples and "x[:, 0:1, 0:3, 0:3]" in report.evidence.caption


def test_a_model_that_is_not_assessed_shows_its_reason_and_no_pictures(pages) -> None:
    report, _, _, probed = pages["binary"]
    assert not report.verdict.assessed and report.evidence is None
    assert json.loads(report.to_json())["evidence"] is None
    assert "NOT ASSESSED" in report.to_html() and "not an image" in report.to_html()
    assert probed["counts"]["img"] == 0 and probed["counts"]["#evidence img.before"] == 0


def test_the_repair_page_shows_what_was_applied_and_before_after(pages) -> None:
    _, page, _, probed = pages["repair"]
    counts = probed["counts"]
    _evidence_counts(counts, 1, 3)
    assert counts["#repair img.repair-pic"] == 1  # the occlusion window drawn on a sample
    assert counts["svg.eval-chart"] == 1 and counts["svg.eval-chart rect.bar"] == 8  # 4 measures, before and after
    text = page.read_text()
    for label in ("Input clamp", "Activation caps", "Occlusion", "On the test set: before and after"):
        assert label in text
    document = json.loads((page.parent / "repair.json").read_text())
    assert document["evidence"]["kind"] == "patch" and document["repair"]["evaluation"]["after"]["attack_success_rate"] < 0.1


def test_the_page_is_deterministic_and_self_contained(pages) -> None:
    report = pages["example"].report
    page = report.to_html()
    again = auditor.audit(EXAMPLE / "model.onnx", EXAMPLE / "clean.npz", limit=10, device="cpu")
    assert page == again.to_html()  # a second run: the same evidence, the same bytes
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:|//)""", page)
    assert "<script" not in page and "@import" not in page and "url(" not in page


def test_png_encoder_writes_exactly_the_pixels() -> None:
    """Pillow is not a dependency; Chromium decoded every picture above. Here: zlib reads back exactly the pixels."""
    import zlib

    picture = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    data = png(picture)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data == png(picture)
    length = int.from_bytes(data[33:37], "big")
    assert data[37:41] == b"IDAT"
    raw = zlib.decompress(data[41:41 + length])
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(5, 1 + 7 * 3)
    assert (rows[:, 0] == 0).all() and np.array_equal(rows[:, 1:].reshape(5, 7, 3), picture)


@pytest.mark.parametrize("name", ["keras_cnn_sig_s1", "mlp-mnist-clean-s0"])
def test_evidence_reads_every_image_layout(name: str, tmp_path: Path) -> None:
    """NHWC (Keras) and flat vectors (an MLP) are pictured as [28, 28, 1], each the clean sample it names."""
    entry = zoo_samples.MANIFEST[name]
    report = auditor.audit(*_zoo(name, tmp_path), device="cpu")
    assert report.evidence is not None and len(report.evidence.examples) == 3
    with np.load(zoo_samples.ZOO / entry["clean_pool"]) as archive:
        x = archive["x"][:10]
    session = ort.InferenceSession(str(zoo_samples.ZOO / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    inputs = zoo_samples.to_layout(x.astype(np.float32) / 255.0, entry["layout"])
    for e in report.evidence.examples:
        assert e.image_before.shape == e.image_after.shape == (28, 28, 1)
        assert np.array_equal(e.image_before[..., 0], x[e.sample, 0])  # uint8 samples over [0, 1]: the same bytes back
        clean = session.run(None, {session.get_inputs()[0].name: inputs[e.sample:e.sample + 1]})[0]
        assert int(clean.argmax()) == e.before


def test_a_scan_says_how_many_samples_its_channel_statistics_come_from(example) -> None:
    """Past capture.scan_statistics samples a scan measures channel statistics on the first ones only: the report and the
    page say so; on as many samples as that, they say nothing."""
    settings = auditor.Settings().override({"capture.scan_statistics": 20, "probe.max_samples": 10})
    many = auditor.audit(example.model, example.test, limit=30, device="cpu", patch_search=False, fourier_probe=False,
                         settings=settings)
    assert (many.data["samples"], many.data["statistics_samples"]) == (30, 20)
    assert json.loads(many.to_json())["data"]["statistics_samples"] == 20
    assert "the first 20 of the 30 clean samples" in many.to_html()
    few = auditor.audit(example.model, example.test, limit=20, device="cpu", patch_search=False, fourier_probe=False,
                        settings=settings)
    assert few.data["statistics_samples"] == 20 and "clean samples (capture.scan_statistics)" not in few.to_html()
