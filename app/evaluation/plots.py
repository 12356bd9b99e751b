"""The report's figures (PNG, matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from app.evaluation.sweep import ThresholdSweep

DPI = 120


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_threshold_curves(
    sweeps: dict[str, ThresholdSweep], threshold: float, path: Path, title: str = ""
) -> Path:
    """Left: precision against recall as t sweeps, one curve per variant, the point at `threshold`
    marked. Right: precision, recall and F1 of each variant against t."""
    plt = _pyplot()
    fig, (pr, by_t) = plt.subplots(1, 2, figsize=(12, 4.8))
    for (name, sweep), colour in zip(sweeps.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False):
        curve = sweep.curve(max_points=600)
        pr.plot(curve["recall"], curve["precision"], color=colour, label=name)
        at = sweep.at(threshold)
        pr.plot([at.recall], [at.precision], "o", color=colour, markersize=6)
        t = np.asarray(curve["threshold"])
        f1 = [2 * p * r / (p + r) if p + r else 0.0 for p, r in zip(curve["precision"], curve["recall"], strict=True)]
        by_t.plot(t, curve["precision"], color=colour, linestyle="-", label=f"{name}: precision")
        by_t.plot(t, curve["recall"], color=colour, linestyle="--", label=f"{name}: recall")
        by_t.plot(t, f1, color=colour, linestyle=":", label=f"{name}: F1")
    by_t.axvline(threshold, color="grey", linewidth=1)
    by_t.annotate(f"t = {threshold:.4g}", (threshold, 1.0), textcoords="offset points", xytext=(4, -12), fontsize=8)
    pr.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="precision-recall as t sweeps (dot: t)")
    by_t.set(xlabel="threshold t (pair distance)", ylabel="value", ylim=(0, 1.02), title="against the threshold")
    pr.grid(alpha=0.3)
    by_t.grid(alpha=0.3)
    pr.legend(loc="lower left", fontsize=8)
    by_t.legend(loc="center right", fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _scatter_by_label(ax, points: np.ndarray, labels: Sequence[str], title: str) -> None:
    names, codes = np.unique(np.asarray(["(no label)" if x is None else str(x) for x in labels]), return_inverse=True)
    colours = _pyplot().get_cmap("turbo")(codes / max(len(names) - 1, 1))
    ax.scatter(points[:, 0], points[:, 1], c=colours, s=4, alpha=0.7, linewidths=0)
    if len(names) <= 20:
        for i, name in enumerate(names):
            centre = np.median(points[codes == i], axis=0)
            ax.annotate(str(name)[:24], centre, fontsize=7, ha="center")
    ax.set(title=title, xticks=[], yticks=[])


def plot_latent_map(
    means: np.ndarray,
    labels: Sequence[str],
    path: Path,
    *,
    tsne_points: int = 2000,
    seed: int = 0,
    log=print,
) -> Path:
    """means (N, D) coloured by label: PCA of all points; and t-SNE of a seeded subsample of at most
    `tsne_points` (0: PCA only). Returns the path written."""
    from sklearn.decomposition import PCA

    plt = _pyplot()
    labels = np.asarray(labels)
    panels = 2 if tsne_points > 0 and len(means) > 5 else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 6), squeeze=False)
    pca = PCA(n_components=2, random_state=seed).fit(means)
    explained = pca.explained_variance_ratio_.sum()
    n_labels = len(set(labels.tolist()))
    _scatter_by_label(
        axes[0, 0], pca.transform(means), labels,
        f"PCA of {len(means)} latent means ({explained:.0%} of variance), {n_labels} labels",
    )
    if panels == 2:
        from sklearn.manifold import TSNE

        started = time.perf_counter()
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(means), min(tsne_points, len(means)), replace=False))
        perplexity = min(30.0, (len(keep) - 1) / 3)
        embedded = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(means[keep])
        _scatter_by_label(axes[0, 1], embedded, labels[keep], f"t-SNE of {len(keep)} sampled means")
        log(f"t-SNE of {len(keep)} points: {time.perf_counter() - started:.1f} s")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_training_curves(metrics: dict, path: Path, latent_dim: int | None = None) -> Path:
    """metrics: the artifact's metrics.json ({"epochs": [...], "best_epoch": ...})."""
    plt = _pyplot()
    epochs = metrics["epochs"]
    x = [m["epoch"] for m in epochs]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    panels = (
        ("loss (nats/question)", "train_loss", "val_loss"),
        ("reconstruction (nats/question)", "train_reconstruction", "val_reconstruction"),
        ("KL (nats/question)", "train_kl", "val_kl"),
    )
    for ax, (title, train_key, val_key) in zip(axes, panels, strict=False):
        ax.plot(x, [m[train_key] for m in epochs], marker=".", label="train")
        ax.plot(x, [m[val_key] for m in epochs], marker=".", label="validation")
        ax.set(title=title, xlabel="epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    kl_axis = axes[2].twinx()
    kl_axis.plot(x, [m["beta"] for m in epochs], color="grey", linestyle=":", label="beta")
    kl_axis.set_ylabel("beta (KL weight)", color="grey")
    axes[3].plot(x, [m["active_units"] for m in epochs], marker=".", color="tab:green")
    axes[3].set(title="active units", xlabel="epoch")
    if latent_dim:
        axes[3].set_ylim(0, latent_dim * 1.05)
        axes[3].axhline(latent_dim, color="grey", linewidth=1, linestyle="--")
    axes[3].grid(alpha=0.3)
    best = metrics.get("best_epoch")
    if best:
        for ax in axes:
            ax.axvline(best, color="tab:red", linewidth=0.8, alpha=0.5)
    fig.suptitle(f"training ({metrics.get('stopped', '?')}; red line: best epoch {best})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_ranking(rows: list[dict], path: Path) -> Path:
    """rows: {"method", "precision_at_1", "map_at_10", "hit_at_10"} -> grouped bars per method."""
    plt = _pyplot()
    metrics = (("precision_at_1", "P@1"), ("map_at_10", "MAP@10"), ("hit_at_10", "hit@10"))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rows) + 2), 4.2))
    width = 0.8 / len(metrics)
    positions = np.arange(len(rows))
    for i, (key, label) in enumerate(metrics):
        values = [row[key] for row in rows]
        bars = ax.bar(positions + (i - 1) * width, values, width, label=label)
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=1)
    ax.set_xticks(positions, [row["method"] for row in rows], fontsize=8, rotation=12, ha="right")
    ax.set(ylim=(0, 1.08), ylabel="score", title="ranking quality (top 10)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
