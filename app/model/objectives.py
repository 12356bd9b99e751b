"""Training objectives on the latent beyond the VAE's own loss.

Reconstruction rewards surface form (a question's first words), not meaning, so an unsupervised
latent is weak at similarity. When the desk has more than text, these terms shape the latent
directly, in the same distance the index uses (Euclidean for the Gaussian latent, cosine for vMF):

- labels (`qsim train --label-column`): a prototype classifier. Each category has a learned point
  in latent space and a code is classified by its distance to every prototype, so codes of one
  category gather around one point and different categories move apart. It is applied to the
  sampled code, not only the mean, because the service compares samples.
- teacher (`training.teacher = "minilm"`, the default): two distillation terms. Regression: a
  learned linear projection of the latent mean direction should point where the teacher's
  embedding of the question points (cosine loss), so the latent keeps what the teacher knows about
  each question. Relational: for each question in a batch, the teacher's similarities to the other
  questions (a softmax over the batch) are the target for the student's latent distances, so the
  geometry the index searches matches the teacher's. The teacher runs once over the corpus at
  training time (cached) and never at serving time.
- pairs (`qsim train --pairs`): known duplicates are pulled together, known non-duplicates pushed
  at least a margin apart, in the index's distance.

Shapes: B = batch, D = latent dimension, C = categories, E = teacher embedding size.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def pairwise_distance(a: torch.Tensor, b: torch.Tensor, metric: str) -> torch.Tensor:
    """(A, D), (B, D) -> (A, B): squared Euclidean for "l2", 1 - cosine for "cosine"."""
    if metric == "cosine":
        return 1.0 - F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T
    return (a.pow(2).sum(-1, keepdim=True) - 2.0 * a @ b.T + b.pow(2).sum(-1)[None, :]).clamp(min=0.0)


class PrototypeClassifier(nn.Module):
    """Cross-entropy of softmax(-distance(code, prototype_c) / temperature) against the label; with
    `margin` > 0 the own prototype's distance counts `margin` longer (an additive margin, as in
    CosFace), so a code must be clearly nearer its own category than any other to score well."""

    def __init__(self, num_classes: int, latent_dim: int, metric: str, temperature: float, seed: int, margin: float = 0.0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        start = torch.randn(num_classes, latent_dim, generator=generator)
        start = F.normalize(start, dim=-1) if metric == "cosine" else start * 0.5
        self.prototypes = nn.Parameter(start)
        self.metric = metric
        self.temperature = temperature
        self.margin = margin

    def forward(self, codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """codes (B, D), labels (B,) class indices -> mean cross-entropy (scalar)."""
        distance = pairwise_distance(codes, self.prototypes, self.metric)
        if self.margin > 0:
            distance = distance + self.margin * F.one_hot(labels, distance.size(1)).to(distance.dtype)
        return F.cross_entropy(-distance / self.temperature, labels)

    @torch.no_grad()
    def accuracy(self, codes: torch.Tensor, labels: torch.Tensor) -> float:
        return self.correct(codes, labels) / len(labels)

    def correct(self, codes: torch.Tensor, labels: torch.Tensor) -> int:
        """How many codes have their own label's prototype nearest."""
        nearest = pairwise_distance(codes, self.prototypes, self.metric).argmin(-1)
        return int((nearest == labels).sum())


def relational_distillation(
    student: torch.Tensor, teacher: torch.Tensor, metric: str, student_temperature: float, teacher_temperature: float
) -> torch.Tensor:
    """student (B, D) latent means, teacher (B, E) unit embeddings -> mean KL(teacher || student)
    over each row's distribution on the other B - 1 questions of the batch."""
    batch = student.size(0)
    off_diagonal = ~torch.eye(batch, dtype=torch.bool, device=student.device)
    teacher_logits = (teacher @ teacher.T / teacher_temperature)[off_diagonal].view(batch, batch - 1)
    student_logits = (-pairwise_distance(student, student, metric) / student_temperature)[off_diagonal].view(
        batch, batch - 1
    )
    return F.kl_div(
        F.log_softmax(student_logits, -1), F.log_softmax(teacher_logits, -1), log_target=True, reduction="batchmean"
    )


def label_contrast(codes: torch.Tensor, means: torch.Tensor, labels: torch.Tensor, metric: str, temperature: float) -> torch.Tensor:
    """codes (B, D) sampled codes as anchors, means (B, D), labels (B,) -> scalar supervised
    contrastive loss (Khosla et al. 2020): for each anchor with another question of its label in the
    batch, the mean over those positives of -log softmax(-distance(code_i, mean_j) / temperature)
    over every other question j of the batch. Anchors without a positive do not count; 0 when none has one."""
    batch = codes.size(0)
    logits = -pairwise_distance(codes, means, metric) / temperature
    self_pair = torch.eye(batch, dtype=torch.bool, device=codes.device)
    logits = logits.masked_fill(self_pair, float("-inf"))
    positive = (labels[:, None] == labels[None, :]) & ~self_pair
    has_positive = positive.any(-1)
    if not has_positive.any():
        return codes.new_zeros(())
    log_probability = F.log_softmax(logits, -1).masked_fill(~positive, 0.0)
    per_anchor = -log_probability.sum(-1)[has_positive] / positive.sum(-1)[has_positive]
    return per_anchor.mean()


def teacher_regression(means: torch.Tensor, teacher: torch.Tensor, projection: nn.Module) -> torch.Tensor:
    """means (B, D), teacher (B, E) unit embeddings -> mean (1 - cosine(projection(means), teacher))."""
    return (1.0 - F.cosine_similarity(projection(means), teacher, dim=-1)).mean()


def pair_contrast(left: torch.Tensor, right: torch.Tensor, duplicate: torch.Tensor, metric: str, margin: float) -> torch.Tensor:
    """left, right (P, D) codes of the two sides of P pairs, duplicate (P,) bool -> scalar:
    the distance of duplicate pairs plus the shortfall of non-duplicates below `margin`."""
    if metric == "cosine":
        distance = 1.0 - F.cosine_similarity(left, right, dim=-1)
    else:
        distance = (left - right).pow(2).sum(-1).clamp(min=1e-12).sqrt()
    loss = torch.where(duplicate, distance, F.relu(margin - distance))
    return loss.mean()


UNLABELLED = -1


def label_indices(labels: list[str | None]) -> tuple[np.ndarray, list[str]]:
    """Category names (None for a question without one) -> (index per question, UNLABELLED for
    None; sorted category names)."""
    names = sorted({label for label in labels if label is not None})
    position = {name: i for i, name in enumerate(names)}
    return np.array([UNLABELLED if label is None else position[label] for label in labels], dtype=np.int64), names


class LatentObjectives(nn.Module):
    """The supervised terms a training run uses, given what its corpus carries.

    `loss(codes, means, rows)` -> the weighted sum of the terms, where `rows` are the questions'
    corpus indices. Holds the learnable prototypes (trained with the model, not
    part of the served artifact) and the teacher's embeddings.
    """

    def __init__(
        self,
        *,
        metric: str,
        latent_dim: int,
        labels: np.ndarray | None,
        num_classes: int,
        label_weight: float,
        label_temperature: float,
        teacher: np.ndarray | None,
        teacher_weight: float,
        teacher_temperature: float,
        student_temperature: float,
        seed: int,
        teacher_regression_weight: float = 0.0,
        label_margin: float = 0.0,
        label_contrast_weight: float = 0.0,
    ):
        super().__init__()
        self.metric = metric
        self.label_weight = label_weight if labels is not None else 0.0
        self.labels = torch.as_tensor(labels) if labels is not None else None
        self.classifier = (
            PrototypeClassifier(num_classes, latent_dim, metric, label_temperature, seed, label_margin)
            if self.label_weight > 0 else None
        )
        self.label_contrast_weight = label_contrast_weight if self.classifier is not None else 0.0
        self.teacher_weight = teacher_weight if teacher is not None else 0.0
        self.teacher = torch.as_tensor(teacher) if teacher is not None else None
        self.teacher_temperature = teacher_temperature
        self.student_temperature = student_temperature
        self.regression_weight = teacher_regression_weight if teacher is not None else 0.0
        self.projection = None
        if self.regression_weight > 0:
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                self.projection = nn.Linear(latent_dim, self.teacher.size(1))

    @property
    def active(self) -> bool:
        return self.classifier is not None or self.teacher_weight > 0 or self.regression_weight > 0

    def loss(self, codes: torch.Tensor, means: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        """The weighted sum of the active terms (scalar; 0 when none is active)."""
        total = codes.new_zeros(())
        index = torch.as_tensor(rows)
        if self.classifier is not None:
            labels = self.labels[index]
            labelled = labels != UNLABELLED
            if labelled.any():
                label_loss = 0.5 * (
                    self.classifier(codes[labelled], labels[labelled]) + self.classifier(means[labelled], labels[labelled])
                )
                # Scaled by the labelled share so mixing in unlabelled transfer text does not weaken labels per question.
                share = labelled.float().mean()
                total = total + self.label_weight * label_loss * share
                if self.label_contrast_weight > 0 and int(labelled.sum()) > 1:
                    contrast = label_contrast(codes[labelled], means[labelled], labels[labelled], self.metric,
                                              self.classifier.temperature)
                    total = total + self.label_contrast_weight * contrast * share
        if self.teacher is not None:
            teacher = self.teacher[index].to(means.dtype)
            if self.teacher_weight > 0 and len(rows) > 2:
                distill = relational_distillation(
                    means, teacher, self.metric, self.student_temperature, self.teacher_temperature
                )
                total = total + self.teacher_weight * distill
            if self.projection is not None:
                total = total + self.regression_weight * teacher_regression(means, teacher, self.projection)
        return total

    def label_accuracy(self, means: torch.Tensor, rows: np.ndarray) -> float | None:
        """Share of labelled `means` whose nearest prototype is their own label's; None without labels."""
        counted = self.label_hits(means, rows)
        return None if counted is None or counted[1] == 0 else counted[0] / counted[1]

    def label_hits(self, means: torch.Tensor, rows: np.ndarray) -> tuple[int, int] | None:
        """(labelled `means` whose nearest prototype is their own label's, labelled means); None
        without a classifier."""
        if self.classifier is None:
            return None
        labels = self.labels[torch.as_tensor(rows)]
        labelled = labels != UNLABELLED
        count = int(labelled.sum())
        if count == 0:
            return 0, 0
        return self.classifier.correct(means[labelled], labels[labelled]), count
