import numpy as np
import pytest

from playbook.metrics import classification_metrics, compare_paired, fidelity


def test_classification_metrics_match_a_hand_count():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.5, 0.1, 0.4], [0.1, 0.2, 0.7]])
    labels = np.array([0, 1, 2, 2])
    m = classification_metrics(scores, labels, ("a", "b", "c"))
    assert m.top1 == 75.0 and m.top5 == 100.0
    assert m.confusion == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]
    assert m.per_class == {"a": 100.0, "b": 100.0, "c": 50.0}


def test_paired_comparison_detects_a_real_drop_and_not_noise():
    rng = np.random.default_rng(0)
    ref = rng.random(5000) < 0.9
    same = ref.copy()
    r = compare_paired(ref, same)
    assert r.delta_top1 == 0 and r.p_value == 1.0 and not r.significant
    worse = ref.copy()
    worse[np.flatnonzero(ref)[:200]] = False  # 4 points lost
    r = compare_paired(ref, worse)
    assert r.delta_top1 == pytest.approx(-4.0) and r.ci_high < 0 < -r.ci_low and r.significant
    assert r.only_reference_correct == 200 and r.only_variant_correct == 0
    noisy = ref.copy()  # as many images fixed as broken: a zero-mean change
    noisy[np.flatnonzero(ref)[:12]] = False
    noisy[np.flatnonzero(~ref)[:10]] = True
    r = compare_paired(ref, noisy)
    assert not r.significant and r.ci_low < 0 < r.ci_high


def test_fidelity_of_identical_and_different_logits():
    a = np.random.default_rng(1).normal(size=(100, 10))
    f = fidelity(a, a)
    assert f.top1_agreement == 100.0 and f.kl_divergence == pytest.approx(0, abs=1e-12) and f.max_abs_error == 0
    g = fidelity(a, a + np.random.default_rng(2).normal(scale=3, size=a.shape))
    assert g.top1_agreement < 100.0 and g.kl_divergence > 0.01
