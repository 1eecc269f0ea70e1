"""Stage 03 (distillation) views: the teacher's soft labels, the temperature and alpha sweeps, the per-seed
comparison of scratch and distilled students."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from playbook.records import StageRecord
from playbook.views.core import PALETTE, Chart, Table, _figure, _mpl_text


# --------------------------------------------------------------------------- distillation (stage 03)
def plot_soft_labels(examples: dict[str, Any]) -> Chart:
    """The teacher's soft labels ``softmax(logits / T)`` for a few test images, one row per image, one column per
    temperature; the true class's bar is highlighted.  ``examples`` is ``DistillationRun.soft_label_examples()``."""
    images, labels, names = examples["images"], examples["labels"], examples["class_names"]
    temps = list(examples["temperatures"])
    probs = examples["probabilities"]
    rows, cols = len(labels), len(temps) + 1
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2.3 * cols, 1.9 * rows + 0.4), dpi=100)
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    for i, label in enumerate(labels):
        ax = axes[i, 0]
        img = np.asarray(images[i])
        ax.imshow(img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1), cmap="gray")
        ax.set_title(_mpl_text(f"true: {names[label]}"), fontsize=8)
        ax.set_axis_off()
        for j, t in enumerate(temps):
            ax = axes[i, j + 1]
            p = np.asarray(probs[t])[i]
            colours = [PALETTE[3] if k == label else PALETTE[0] for k in range(len(p))]
            ax.bar(range(len(p)), p, color=colours)
            ax.set_ylim(0, 1)
            ax.set_xticks(range(len(p)), [str(k) for k in range(len(p))], fontsize=6)
            ax.tick_params(axis="y", labelsize=6)
            entropy = float(-(p * np.log(np.clip(p, 1e-12, 1))).sum())
            ax.set_title(f"T = {t:g}: top {p.max():.2f}, H = {entropy:.2f}", fontsize=7)
    fig.suptitle("teacher's soft labels at several temperatures (bars: classes 0-9, red: true class; H: entropy, nats)",
                 fontsize=9)
    fig.tight_layout()
    tops = ", ".join(f"T={t:g}: {np.mean(np.asarray(probs[t]).max(1)):.2f}" for t in temps)
    return Chart(fig, f"teacher soft labels for {rows} test images at T = {', '.join(f'{t:g}' for t in temps)}; mean "
                      f"top probability {tops}")


def plot_distillation_sweeps(sweeps: dict[str, Any]) -> Chart:
    """Validation top-1 against the temperature (log scale) and against alpha, with the scratch student as a line.
    ``sweeps`` is ``DistillationRun.sweeps``: rows with ``temperature``, ``alpha``, ``val_top1`` and
    ``scratch_val_top1``."""
    fig, axes = _figure(10, 3.6, 2)
    for ax, which, xlabel in ((axes[0], "temperature", "temperature T (log scale)"),
                              (axes[1], "alpha", "alpha: weight of the hard-label loss")):
        rows = sorted(sweeps.get(which) or [], key=lambda r: r[which])
        if not rows:
            ax.text(0.5, 0.5, f"no {which} sweep in this run", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        xs, ys = [r[which] for r in rows], [r["val_top1"] for r in rows]
        fixed = "alpha" if which == "temperature" else "temperature"
        ax.plot(xs, ys, "o-", color=PALETTE[2], label=f"distilled ({fixed} = {rows[0][fixed]:g})")
        ax.axhline(rows[0]["scratch_val_top1"], color="black", ls="--", lw=1, label="scratch (same seed and budget)")
        for x, y in zip(xs, ys):
            ax.annotate(f"{y:.2f}", (x, y), fontsize=7, xytext=(3, 4), textcoords="offset points")
        if which == "temperature":
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title(f"accuracy vs {which}", fontsize=9)
    fig.tight_layout()
    parts = []
    for which in ("temperature", "alpha"):
        rows = sweeps.get(which) or []
        if rows:
            parts.append(f"{which}: " + ", ".join(f"{r[which]:g} -> {r['val_top1']:.2f}%" for r in rows))
    return Chart(fig, "validation top-1 of distilled students; " + "; ".join(parts))


def distillation_sweep_table(rows: Sequence[dict[str, Any]]) -> Table:
    """One sweep (``DistillationRun.sweeps["temperature"]`` or ``["alpha"]``) as a table."""
    return Table([{"T": r["temperature"], "alpha": r["alpha"], "val top-1 %": r["val_top1"],
                   "scratch val top-1 %": r["scratch_val_top1"], "gain (points)": r["gain"], "train s": r["seconds"]}
                  for r in rows])


def distillation_seed_table(results: Sequence[dict[str, Any]], stats: dict[str, Any] | None) -> Table:
    """Scratch and distilled test top-1 per seed, the per-seed gain with its paired bootstrap interval and
    McNemar's p, then mean ± std over seeds with the paired t-test."""
    rows: list[dict[str, Any]] = [
        {"seed": r["seed"], "scratch top-1 %": r["scratch_top1"], "distilled top-1 %": r["distilled_top1"],
         "gain (points)": r["gain"], "gain 95% CI": f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]",
         "McNemar p": r["mcnemar_p"]} for r in results]
    if stats:
        def pm(mean: float, std: float | None, sign: str = "") -> str:
            return f"{mean:{sign}.2f}" + ("" if std is None else f" ± {std:.2f}")

        rows.append({"seed": f"mean ± std ({stats['n']} seeds)",
                     "scratch top-1 %": pm(stats["scratch_mean"], stats["scratch_std"]),
                     "distilled top-1 %": pm(stats["distilled_mean"], stats["distilled_std"]),
                     "gain (points)": pm(stats["gain_mean"], stats["gain_std"], "+"),
                     "gain 95% CI": "" if stats["ci_low"] is None
                     else f"[{stats['ci_low']:+.2f}, {stats['ci_high']:+.2f}] (t)",
                     "McNemar p": "" if stats["p_value"] is None else f"paired t-test p = {stats['p_value']:.3g}"})
    return Table(rows)


def plot_seed_comparison(results: Sequence[dict[str, Any]]) -> Chart:
    """Scratch and distilled test top-1 of each seed, joined by a line (a paired design: the lines' slopes are the
    gains the t-test looks at)."""
    fig, ax = _figure(4.2, 3.4)
    for r in results:
        colour = PALETTE[2] if r["distilled_top1"] > r["scratch_top1"] else PALETTE[3]
        ax.plot([0, 1], [r["scratch_top1"], r["distilled_top1"]], "o-", color=colour, lw=1)
        ax.annotate(f"seed {r['seed']}", (1, r["distilled_top1"]), fontsize=7, xytext=(4, 0),
                    textcoords="offset points", va="center")
    ax.set_xticks([0, 1], ["scratch", "distilled"])
    ax.set_xlim(-0.3, 1.5)
    ax.set_ylabel("test top-1 (%)")
    ax.grid(alpha=0.3)
    ax.set_title("same student, same seed: scratch vs distilled", fontsize=9)
    fig.tight_layout()
    return Chart(fig, "test top-1 per seed, scratch vs distilled: " + "; ".join(
        f"seed {r['seed']}: {r['scratch_top1']:.2f} -> {r['distilled_top1']:.2f}" for r in results))


# --------------------------------------------------------------------------- tables and narrative of the record
# Every function below reads a stage-03 record (``DistillationRun.snapshot()`` while the notebook runs, or
# ``distillation.json`` afterwards): display only.
def student_table(record: StageRecord) -> Table:
    """Teacher and student side by side: architecture, knobs, parameters, share of the teacher, FLOPs, weights."""
    teacher, student = record.get("teacher"), record.get("student")
    shapes = student.get("feature_shapes")
    rows = [{"role": "teacher", "architecture": teacher["architecture"]["name"],
             "options": teacher["architecture"].get("knobs") or {}, "parameters": teacher["parameters"],
             "share of teacher": 1.0, "FLOPs per image": student["teacher_flops"],
             "weights": f"{Path(teacher['checkpoint']).name} (sha256 {teacher['checkpoint_sha256'][:12]})"},
            {"role": "student", "architecture": student["architecture"]["name"],
             "options": student["architecture"].get("knobs") or {}, "parameters": student["parameters"],
             "share of teacher": student["parameter_ratio"], "FLOPs per image": student["flops"],
             "weights": "trained here"}]
    if shapes:
        rows[0]["feature map"] = "x".join(map(str, shapes["teacher"]))
        rows[1]["feature map"] = "x".join(map(str, shapes["student"]))
    return Table(rows)


def student_plan_table(record: StageRecord) -> Table:
    """Each candidate width with its untrained FP16 package, eligible weights and predicted compressed size, and
    whether it fits the size budget (the student trained is the widest that does)."""
    plan = (record.get("student") or {}).get("plan") or {}
    chosen = (plan.get("options") or {}).get("width")
    return Table([{"width": c["width"], "parameters": c["parameters"], "FP16 package bytes": c["fp16_bytes"],
                   "eligible weight elements": c["eligible"], "predicted compressed bytes": round(c["predicted_bytes"]),
                   "within the size budget": c["predicted_bytes"] <= plan["max_bytes"],
                   "trained": c["width"] == chosen} for c in plan.get("candidates") or []])


def explain_seeds(record: StageRecord) -> str:
    """One paragraph with the measured distilled-versus-scratch comparison (for the notebook's markdown)."""
    s, results, cfg = record.get("seed_statistics"), record.get("seeds") or [], record.config
    if not s:
        return "The seed comparison has not run yet."

    def pm(mean: float, std: float | None) -> str:
        return f"{mean:.2f}" + ("" if std is None else f" ± {std:.2f}")

    t = ("one seed: no test over seeds" if s["p_value"] is None else
         f"paired t-test over seeds t({s['n'] - 1}) = {s['t']:.2f}, two-sided p = {s['p_value']:.3g}")
    mc = max(r["mcnemar_p"] for r in results)
    training = record.get("training") or {}
    text = (f"Over {s['n']} seed(s) ({training.get('epochs')} epochs, {training.get('train_images')} training images, "
            f"T = {cfg['temperature']:g}, alpha = {cfg['alpha']:g}, beta = {cfg['beta']:g}, augment = "
            f"{cfg['augment']}): scratch {pm(s['scratch_mean'], s['scratch_std'])}%, distilled "
            f"{pm(s['distilled_mean'], s['distilled_std'])}%, gain {s['gain_mean']:+.2f}"
            + ("" if s["gain_std"] is None else f" ± {s['gain_std']:.2f}") + f" points; {t}. "
            f"Distillation won in {s['wins']} of {s['n']} seeds; the largest per-seed McNemar p is {mc:.3g}.")
    gap = s["teacher_top1"] - s["scratch_mean"]
    if gap > 0:
        text += (f" The teacher's FP32 package scores {s['teacher_top1']:.2f}%, {gap:.2f} points above the scratch "
                 f"student: distillation recovered {100 * s['gain_mean'] / gap:.0f}% of that gap, which bounds "
                 "what any teacher of this accuracy can add.")
    return text


def explain_shipped(record: StageRecord) -> str:
    """The stacked result in one paragraph: the shipped student's size and accuracy against the FP32 teacher."""
    shipped = record.get("shipped")
    if not shipped or "shipped" not in shipped:
        return "No compressed student was measured (see the pitfalls)."
    v, plain = record.variant(shipped["shipped"]), record.variant(shipped["variants"][0])
    base = record.get("baseline")
    fp32_bytes, vs = base["fp32_size_bytes"], v.vs_reference
    return (f"`{v.name}`: {v.size_bytes / 1e3:.1f} kB against the FP32 teacher's {fp32_bytes / 1e3:.1f} kB "
            f"(**{fp32_bytes / v.size_bytes:.1f}x smaller**), test top-1 {v.top1:.2f}% "
            f"[{v.top1_ci[0]:.2f}, {v.top1_ci[1]:.2f}] against the teacher's {base['fp32_top1']:.2f}%: "
            f"**{vs.delta_top1:+.2f} points**, paired 95% CI [{vs.ci_low:+.2f}, {vs.ci_high:+.2f}], McNemar p = "
            f"{vs.p_value:.3g}. The uncompressed student ({plain.name}, {plain.size_bytes / 1e3:.1f} kB) scores "
            f"{plain.top1:.2f}%, so compression with `{shipped['choice']['recipe']}` costs "
            f"{v.top1 - plain.top1:+.2f} points. Recipe: {shipped['choice']['why']}."
            + _trained_on(plain.extra.get("train_images"), (record.get("training") or {}).get("train_images")))


def _trained_on(shipped_images: int | None, compared_images: int | None) -> str:
    """Says how many images the shipped student trained on when the seed comparison used another number."""
    if not shipped_images or shipped_images == compared_images:
        return ""
    return (f" The shipped student trained on {shipped_images:,} images (first seed, distilled), the seed "
            f"comparison's students on {compared_images:,}.")
