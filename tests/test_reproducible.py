"""The same seed gives the same numbers on any `--threads` (hpo.cpus.reproducible_threads).

torch adds a sum split over threads in an order that follows the thread count (oneDNN's
convolution weight gradients, MKL's products with a long inner dimension), so the
trainings whose gradients are such sums run on one thread. These tests train with one
and with two torch threads set by the caller and compare the results bit for bit: the
seed's CNN, the SAE at the shapes the studies use (it keeps the caller's threads), and
a whole trial's JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from hpo.cli import main
from hpo.cpus import torch_threads
from hpo.data.cache import load_tensors
from hpo.models import training
from hpo.models.classifiers import ColorMnistCNN
from hpo.params import TrialParams
from hpo.sae.model import FaithfulSAE
from hpo.sae.training import SAEData, train_sae
from hpo.tasks.classifier_metrics import decomposition_errors


def cnn_weights(threads: int, train: Any = training.train_classifier) -> dict[str, torch.Tensor]:
    """The CNN after one epoch on 256 random colour images, trained with `threads` torch
    threads set outside the training function."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (256, 3, 28, 28), generator=gen, dtype=torch.uint8)
    digits = torch.randint(0, 10, (256,), generator=gen)
    torch.manual_seed(0)
    model = ColorMnistCNN()
    with torch_threads(threads):
        train(
            model, images, digits, epochs=1, lr=1e-3, batch_size=32, seed=0, desc="cnn",
            progress=False,
        )  # fmt: skip
    return model.state_dict()


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def same_tensors(a: Any, b: Any) -> bool:
    """Nested dicts and lists of tensors (a cached bundle), equal bit for bit."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(
            same_tensors(a[k], b[k]) for k in a
        )  # fmt: skip
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_tensors(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    return bool(a == b)


def test_the_cnn_trains_to_the_same_bits_on_one_and_two_threads() -> None:
    assert same(cnn_weights(1), cnn_weights(2))


def test_without_one_thread_two_threads_train_another_cnn() -> None:
    """What the test above guards against: the same loop on the caller's threads (the
    function without its section) gives other weights on two threads than on one."""
    unprotected = training.train_classifier.__wrapped__
    assert not same(cnn_weights(1, unprotected), cnn_weights(2, unprotected))


@pytest.mark.parametrize(("d_in", "d_out"), [(128, 64), (64, 10)])  # fc1 and fc2
@pytest.mark.parametrize("n_components", [256, 1024])
def test_the_sae_trains_to_the_same_bits_on_one_and_two_threads(
    d_in: int, d_out: int, n_components: int
) -> None:
    """The SAE keeps `--threads` (its products split over rows, not over the summed
    dimension): checked at the layers and sizes the colored-MNIST studies search. Its
    logged losses may differ in the last bit (a loss over more than 32768 numbers is
    summed in one part per thread), not what they train: a sum's gradient is the same."""
    gen = torch.Generator().manual_seed(1)
    inputs = torch.randn(1024, d_in, generator=gen)
    weight_t = torch.randn(d_in, d_out, generator=gen) / d_in**0.5
    concepts = F.one_hot(torch.randint(0, 2, (1024,), generator=gen), 2).float()
    data = SAEData(inputs=inputs, targets=inputs @ weight_t, weight_t=weight_t, concepts=concepts)
    params = TrialParams(
        n_components=n_components, top_k=16, steps=8, eval_every=8, decorr_weight=0.4
    )
    runs = []
    for threads in (1, 2):
        with torch_threads(threads):
            runs.append(train_sae(data, params))
    assert same(runs[0].sae.state_dict(), runs[1].sae.state_dict())


def test_the_decomposition_errors_are_the_same_bits_on_one_and_two_threads() -> None:
    """A reconstruction error over 4096 × 64 outputs: more numbers than one thread sums."""
    gen = torch.Generator().manual_seed(2)
    inputs = torch.randn(4096, 128, generator=gen)
    weight_t = torch.randn(128, 64, generator=gen) / 128**0.5
    concepts = torch.zeros(4096, 0)
    data = SAEData(inputs=inputs, targets=inputs @ weight_t, weight_t=weight_t, concepts=concepts)
    torch.manual_seed(0)
    sae = FaithfulSAE(128, 64, 256, 16)
    errors = []
    for threads in (1, 2):
        with torch_threads(threads):
            errors.append(decomposition_errors(sae, data))
    assert errors[0] == errors[1]


def without_timings(result: dict[str, Any]) -> dict[str, Any]:
    """A trial's JSON less what may differ by design: the seconds and the thread count."""
    return {
        k: v for k, v in result.items() if k not in ("timings", "torch_threads")
    }  # fmt: skip


@pytest.mark.slow  # two trials, each training a CNN and its oracle: ~20 s
def test_a_cnn_trial_prints_the_same_json_on_one_and_two_threads(
    make_study: Any,
    tiny_mnist_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A fresh cache for each: the base model, the references, the SAEs and the fitted
    removal are all made again, on one thread and on two. The cached base models and
    bundles are compared too: on a task this small, weights that differ in the last
    bits may still print the same JSON."""
    study = make_study(
        task={"base_model": "cnn", "base_epochs": 1},
        params={"layers": "fc1+fc2", "ablate": "fitted", "fit_steps": 20},
    )
    results = []
    for threads in (1, 2):
        monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path / f"cache-{threads}"))
        args = [str(study), "--data-dir", str(tiny_mnist_dir), "--json", "--threads"]
        assert main(["trial", *args, str(threads)]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert [r["torch_threads"] for r in results] == [1, 2]
    assert without_timings(results[0]) == without_timings(results[1])
    cached = [sorted((tmp_path / f"cache-{t}" / "base_models").glob("*.pt")) for t in (1, 2)]
    assert [p.name for p in cached[0]] == [p.name for p in cached[1]] and len(cached[0]) == 2
    for one, two in zip(*cached, strict=True):
        assert same_tensors(load_tensors(one), load_tensors(two)), one.name
