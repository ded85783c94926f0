"""A model's reference profile: what live traffic is compared against.

Built once, on a labelled validation set, when a model is trained or imported, and stored
in the model's metadata. Everything here is plain numpy/scipy so monitors can read it
without torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

ALL = "all"  # the key of the whole validation set, next to each subgroup's key
CONFIDENCE_BIN_EDGES = tuple(float(x) for x in np.linspace(0.0, 1.0, 21))
QUANTILES = {"p01": 0.01, "p05": 0.05, "p50": 0.50}


@dataclass(frozen=True)
class InputSpec:
    """How an uploaded image becomes the model's input: decoded, converted to `channels`
    (1 = grayscale, 3 = RGB), resized to height x width with a box filter, scaled to [0, 1],
    then normalised per channel with (x - mean) / std."""

    height: int = 8
    width: int = 8
    channels: int = 1
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if not (1 <= self.height <= 4096 and 1 <= self.width <= 4096):
            raise ValueError(f"input size must be within 1..4096, got {self.height}x{self.width}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError("mean and std need one value per channel")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")


@dataclass(frozen=True)
class SubgroupReference:
    """One subgroup's behaviour on the validation set. Class order is the profile's labels;
    the confusion matrix has true classes in rows and predicted classes in columns."""

    count: int
    accuracy: float
    mean_confidence: float
    predicted_class_distribution: tuple[float, ...]
    confidence_histogram: tuple[float, ...]
    confidence_quantiles: Mapping[str, float]
    confusion_matrix: tuple[tuple[int, ...], ...]
    # ATC's threshold on calibrated confidence (monitors/estimates.py); None in a profile made
    # before it was stored, whose estimate stays the mean calibrated confidence
    atc_threshold: float | None = None


@dataclass(frozen=True)
class ReferenceProfile:
    labels: tuple[str, ...]
    input_spec: InputSpec
    training_subgroup_shares: Mapping[str, float]
    subgroups: Mapping[str, SubgroupReference]
    temperature: float
    confidence_bin_edges: tuple[float, ...] = CONFIDENCE_BIN_EDGES
    notes: Mapping[str, Any] = field(default_factory=dict)
    # the codebook of regions in the model's embedding (monitors/regions.py), as plain data;
    # None for a model that exports no `embed`, or one profiled before regions existed
    regions: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = _plain(asdict(self))
        if data["regions"] is None:  # BentoML's metadata refuses None
            del data["regions"]
        for subgroup in data["subgroups"].values():
            if subgroup["atc_threshold"] is None:
                del subgroup["atc_threshold"]
        return data

    def codebook(self):
        """The regions' Codebook, or None when the model was profiled without one."""
        if self.regions is None:
            return None
        from monitors.regions import Codebook

        return Codebook.from_dict(self.regions)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ReferenceProfile":
        spec = data["input_spec"]
        return cls(
            labels=tuple(data["labels"]),
            input_spec=InputSpec(
                height=spec["height"], width=spec["width"], channels=spec["channels"],
                mean=tuple(spec["mean"]), std=tuple(spec["std"]),
            ),
            training_subgroup_shares=dict(data["training_subgroup_shares"]),
            subgroups={
                key: SubgroupReference(
                    count=s["count"],
                    accuracy=s["accuracy"],
                    mean_confidence=s["mean_confidence"],
                    predicted_class_distribution=tuple(s["predicted_class_distribution"]),
                    confidence_histogram=tuple(s["confidence_histogram"]),
                    confidence_quantiles=dict(s["confidence_quantiles"]),
                    confusion_matrix=tuple(tuple(row) for row in s["confusion_matrix"]),
                    atc_threshold=s.get("atc_threshold"),
                )
                for key, s in data["subgroups"].items()
            },
            temperature=float(data["temperature"]),
            confidence_bin_edges=tuple(data.get("confidence_bin_edges", CONFIDENCE_BIN_EDGES)),
            notes=dict(data.get("notes", {})),
            regions=data.get("regions"),
        )


def _plain(value: Any) -> Any:
    """Tuples to lists, numpy scalars to Python: what JSON and BentoML metadata accept."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature scaling (Guo et al., 2017): the T minimising validation negative
    log-likelihood of softmax(logits / T). Used later for label-free accuracy estimates."""
    from scipy.optimize import minimize_scalar

    rows = np.arange(len(labels))

    def nll(log_t: float) -> float:
        p = softmax(logits, float(np.exp(log_t)))
        return float(-np.mean(np.log(np.clip(p[rows, labels], 1e-12, None))))

    result = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))


def summarise_subgroup(probs: np.ndarray, labels: np.ndarray, n_classes: int,
                       temperature: float | None = None) -> SubgroupReference:
    """One subgroup's validation statistics; with the model's `temperature`, ATC's threshold too."""
    from monitors.estimates import ThresholdedConfidence, calibrated_confidence

    predicted = probs.argmax(axis=1)
    confidence = probs.max(axis=1)
    hist, _ = np.histogram(confidence, bins=np.asarray(CONFIDENCE_BIN_EDGES))
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    n = len(labels)
    return SubgroupReference(
        count=n,
        accuracy=float(np.mean(predicted == labels)),
        mean_confidence=float(confidence.mean()),
        predicted_class_distribution=tuple(np.bincount(predicted, minlength=n_classes) / n),
        confidence_histogram=tuple(hist / n),
        confidence_quantiles={k: float(np.quantile(confidence, q)) for k, q in QUANTILES.items()},
        confusion_matrix=tuple(tuple(int(c) for c in row) for row in confusion),
        atc_threshold=(None if temperature is None else
                       ThresholdedConfidence.fit(calibrated_confidence(probs, temperature), predicted == labels).threshold),
    )


def build_profile(
    *,
    logits: np.ndarray,
    labels: np.ndarray,
    subgroups: Sequence[str],
    class_names: Sequence[str],
    input_spec: InputSpec,
    training_subgroup_shares: Mapping[str, float],
    notes: Mapping[str, Any] | None = None,
    embeddings: np.ndarray | None = None,
    regions: int = 32,
) -> ReferenceProfile:
    """The profile of a model from its validation-set logits, true labels and each row's
    subgroup key (e.g. "capture=phone"). Statistics use the uncalibrated softmax, as served.
    With the validation set's `embeddings` (the model's `embed`), a codebook of `regions`
    prototypes in that space too (monitors/regions.py)."""
    labels = np.asarray(labels)
    subgroups = np.asarray(subgroups)
    if not (len(logits) == len(labels) == len(subgroups)) or len(labels) == 0:
        raise ValueError("logits, labels and subgroups need the same, non-zero length")
    n_classes = len(class_names)
    if logits.shape[1] != n_classes:
        raise ValueError(f"model emits {logits.shape[1]} classes but {n_classes} class names were given")
    probs = softmax(logits)
    temperature = fit_temperature(logits, labels)
    per_subgroup = {ALL: summarise_subgroup(probs, labels, n_classes, temperature)}
    for key in sorted(set(subgroups.tolist())):
        rows = subgroups == key
        per_subgroup[key] = summarise_subgroup(probs[rows], labels[rows], n_classes, temperature)
    codebook = None
    if embeddings is not None:
        from monitors.regions import fit_codebook

        # reference shares in the training mix: the traffic the model expects, not the
        # validation split's (which may be balanced across subgroups)
        codebook = fit_codebook(np.asarray(embeddings, np.float64), labels=labels, predicted=probs.argmax(axis=1),
                                confidence=probs.max(axis=1), subgroups=subgroups, k=regions, seed=0,
                                subgroup_mix=training_subgroup_shares).to_dict()
    return ReferenceProfile(
        labels=tuple(str(c) for c in class_names),
        input_spec=input_spec,
        training_subgroup_shares={k: float(v) for k, v in training_subgroup_shares.items()},
        subgroups=per_subgroup,
        temperature=temperature,
        notes=dict(notes or {}),
        regions=codebook,
    )


def subgroup_shares(keys: Sequence[str]) -> dict[str, float]:
    values, counts = np.unique(np.asarray(keys), return_counts=True)
    return {str(v): float(c / counts.sum()) for v, c in zip(values, counts)}


def reference_for(profile: ReferenceProfile, subgroup: str) -> SubgroupReference:
    """The subgroup's own reference, or the whole validation set's when it has none
    (e.g. `other`, or a model profiled without subgroups)."""
    return profile.subgroups.get(subgroup) or profile.subgroups[ALL]
