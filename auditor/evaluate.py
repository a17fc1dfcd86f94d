"""Accuracy, attack success rate and agreement of a model on labelled / triggered samples."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from auditor.capture import classifier
from auditor.errors import DataError
from auditor.graph.index import GraphIndex
from auditor.io import data, model, runtime
from auditor.settings import Settings


@dataclass(frozen=True)
class Evaluation:
    """Fractions in [0, 1]; None where the inputs needed for one were not given."""

    model: str
    samples: int
    accuracy: float | None
    attack_success_rate: float | None
    triggered_accuracy: float | None  # triggered samples classified as their true label (needs labels 'y')
    triggered_samples: int | None
    target: int | None
    # clean test samples of the target class classified as it (needs labels 'y' and a target): a
    # repair that acts on one class's score can cost that class far more than the overall accuracy shows
    target_accuracy: float | None
    agreement: float | None
    reference: str | None
    provider: str
    threads: int | None = None  # onnxruntime's intra-op threads per session; None: its default

    def to_dict(self) -> dict:
        return asdict(self)


def predict(index: GraphIndex, samples: data.Samples | data.SampleFile, provider: runtime.Provider, batch: int) -> tuple[np.ndarray, int]:
    """Arg-max class of the model's class scores for every sample, and the number of classes."""
    scores = classifier(index.model, index, provider, batch)(samples)
    return scores.argmax(axis=1), scores.shape[1]


def evaluate(
    model_path: str,
    data_path: str,
    triggered: str | None = None,
    target: int | None = None,
    reference: str | None = None,
    limit: int | None = None,
    device: str = "auto",
    threads: int | None = None,
    settings: Settings | None = None,
) -> Evaluation:
    """Measure `model_path` on a labelled test set, a triggered set and against a reference model."""
    settings = settings or Settings()
    if triggered is not None and target is None:
        raise DataError("a triggered set needs a target: the class the attack aims for")
    provider = runtime.select_provider(device, threads)
    loaded = model.load(model_path)
    index = GraphIndex(loaded.proto)
    specs = data.input_specs(loaded.proto)
    batch = data.batch_size(specs, settings.run.evaluate_batch)
    test = data.stream(data_path, specs, limit, settings.limits.data_bytes, settings.preprocess)
    batch = data.bounded_batch(batch, test, settings.capture.batch_values)
    predicted, classes = predict(index, test, provider, batch)
    if target is not None and not 0 <= target < classes:
        raise DataError(f"target {target} is not a class of the model (0..{classes - 1})")
    accuracy, target_accuracy = None, None
    if test.labels is not None:
        _check_labels(test.labels, classes, data_path)
        accuracy = float((predicted == test.labels).mean())
        if target is not None and (of_target := test.labels == target).any():
            target_accuracy = float((predicted[of_target] == target).mean())
    asr, triggered_count, triggered_accuracy = None, None, None
    if triggered is not None:
        attacked = data.stream(triggered, specs, limit, settings.limits.data_bytes, settings.preprocess)
        labels = predict(index, attacked, provider, batch)[0]
        hit = labels == target
        if attacked.labels is not None:
            _check_labels(attacked.labels, classes, triggered)
            keep = attacked.labels != target  # samples already of the target class prove nothing
            hit = hit[keep]
            if keep.any():  # a repair that only moves triggered inputs to another wrong class shows here
                triggered_accuracy = float((labels[keep] == attacked.labels[keep]).mean())
        if hit.size == 0:
            raise DataError(f"{triggered}: no triggered samples whose label differs from the target {target}")
        asr, triggered_count = float(hit.mean()), int(hit.size)
    agreement = None
    if reference is not None:
        reference_model = model.load(reference)
        reference_index = GraphIndex(reference_model.proto)
        reference_specs = data.input_specs(reference_model.proto)
        reference_test = data.stream(data_path, reference_specs, limit, settings.limits.data_bytes, settings.preprocess)
        reference_batch = data.bounded_batch(data.batch_size(reference_specs, settings.run.evaluate_batch), reference_test,
                                             settings.capture.batch_values)
        agreement = float((predict(reference_index, reference_test, provider, reference_batch)[0] == predicted).mean())
    return Evaluation(
        model=str(model_path), samples=len(test), accuracy=accuracy, attack_success_rate=asr,
        triggered_accuracy=triggered_accuracy, triggered_samples=triggered_count, target=target,
        target_accuracy=target_accuracy, agreement=agreement,
        reference=None if reference is None else str(reference), provider=provider.name,
        threads=provider.threads,
    )


def _check_labels(labels: np.ndarray, classes: int, source: str) -> None:
    if labels.max(initial=0) >= classes:
        raise DataError(f"{source}: label {labels.max()} is out of range for a model with {classes} classes")
