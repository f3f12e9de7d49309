"""ablation.png with the 2,400-step runs added: python plot_combined.py (from this folder)."""
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

fig, ax = plt.subplots(figsize=(6.4, 4.2))
runs = (("results.json", "1,200 steps", "C0"), ("steps2400/results.json", "2,400 steps", "C3"))
for path, label, color in runs:
    rows = json.load(open(path))["summary"]
    caps = [r["capacity"] for r in rows]
    ax.plot(caps, [r["mean"] for r in rows], marker="o", color=color, label=f"{label}, mean of 3 seeds")
    for r in rows:
        ax.scatter([r["capacity"]] * len(r["accuracy"]), r["accuracy"], color=color, alpha=0.5, s=14,
                   zorder=3)
ax.axhline(rows[0]["chance"], color="black", linestyle=":", linewidth=1, label="chance")
ax.axhline(sum(1 / k for k in (1, 2, 3)) / 3, color="grey", linestyle="--", linewidth=1,
           label="plateau: any not-yet-asked value")
ax.set_xlabel("eidetic store M_e (tokens per layer)")
ax.set_ylabel("recall accuracy (500 unseen sequences)")
ax.set_ylim(0, 1.02)
ax.legend(loc="lower right", fontsize=8)
fig.tight_layout()
fig.savefig("ablation_steps.png", dpi=120)
