"""The one prediction interface: Apple's runtime on macOS, the reference executor elsewhere, provenance always."""
import platform

import numpy as np
import pytest
import torch

from playbook.coreml import ExportConfig, export_model, load_runtime, predict, predict_split
from playbook.models import create_model

ON_MACOS = platform.system() == "Darwin"


@pytest.fixture(scope="module")
def exported(tmp_path_factory, digits):
    torch.manual_seed(0)
    model = create_model("squeezenet", 10, 1, width=8).eval()
    out = tmp_path_factory.mktemp("pkgs")
    plain = export_model(model, digits, ExportConfig(precision="fp32"), out, "plain").path
    clf = export_model(model, digits, ExportConfig(precision="fp32", classifier=True, input_kind="image"), out,
                       "clf").path
    return model, plain, clf


@pytest.mark.skipif(ON_MACOS, reason="off macOS only: there 'auto' means Apple's runtime")
def test_auto_uses_the_reference_executor_and_says_so(exported, digits):
    model, plain, _ = exported
    outputs, provenance = predict(plain, {"image": digits.to_tensor(digits.test.images[:5]).numpy()})
    assert provenance.runtime == "reference" and "not Apple's runtime" in provenance.note
    with torch.no_grad():
        expected = model(digits.to_tensor(digits.test.images[:5])).numpy()
    np.testing.assert_allclose(outputs["logits"], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(ON_MACOS, reason="off macOS only: checks the refusal where Core ML cannot run")
def test_asking_for_core_ml_off_macos_is_a_clear_error(exported):
    with pytest.raises(RuntimeError, match="the Core ML runtime needs macOS"):
        load_runtime(exported[1], runtime="coreml")


def test_classifier_with_image_input_returns_probabilities_in_class_order(exported, digits):
    model, _, clf = exported
    scores, provenance = predict_split(clf, digits, digits.test.head(20), runtime="auto")
    assert scores.shape == (20, 10)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-5)
    with torch.no_grad():
        expected = torch.softmax(model(digits.to_tensor(digits.test.images[:20])), dim=1).numpy()
    np.testing.assert_allclose(scores, expected, atol=1e-4)


@pytest.mark.skipif(not ON_MACOS, reason="Apple's Core ML runtime runs only on macOS (MLModel.predict raises "
                                          "elsewhere); off macOS the reference executor is tested instead")
@pytest.mark.parametrize("compute_units", ["CPU_ONLY", "ALL"])
def test_core_ml_runtime_agrees_with_the_reference_executor(exported, digits, compute_units):
    _, plain, _ = exported
    images = digits.test.head(32)
    apple, p1 = predict_split(plain, digits, images, runtime="coreml", compute_units=compute_units)
    ours, p2 = predict_split(plain, digits, images, runtime="reference")
    assert p1.runtime == "coreml" and p1.compute_units == compute_units and p2.runtime == "reference"
    assert (apple.argmax(1) == ours.argmax(1)).mean() >= 0.97
    np.testing.assert_allclose(apple, ours, atol=5e-2 * max(1.0, float(np.abs(ours).max())))


def test_parity_compares_probabilities_for_a_classifier_package(exported, digits):
    from playbook.coreml import check_parity

    model, plain, clf = exported
    from playbook.train import predict_logits

    logits = predict_logits(model, digits, digits.test.head(50))
    assert check_parity(logits, plain, digits, digits.test.head(50), "fp32").compared == "logits"
    result = check_parity(logits, clf, digits, digits.test.head(50), "fp32")
    assert result.compared == "probabilities" and result.fidelity.top1_agreement == 100.0
