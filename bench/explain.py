"""FActOR heatmap latency per image: encoder forward + mapper + weighting + upsampling, and regions.

Two cases, random weights where no trained ones exist (timing does not depend on the values):

* ``lite``: mammoclip-lite at the demo size 256x160, batch 1 and 8;
* ``b5``: mammoclip-b5-paper at 1520x912, batch 1 (the paper's input; the forward dominates).

Usage::

    python bench/explain.py [--repeats N] [--skip-b5]

Prints a table (median and range of seconds per image) and writes ``bench/out/explain.json`` with
the machine, its load average and torch's thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parent / "out" / "explain.json"


def _case(name: str, size: tuple[int, int], batch: int, repeats: int) -> dict[str, object]:
    from mammoclip.attribution import AttributeSpec, Explainer, FactorMapper, HeatmapContext, heat_regions
    from mammoclip.attribution.mapper import DEFAULT_TAP
    from mammoclip.models import create_model
    from mammoclip.train.factor import feature_shape

    torch.manual_seed(0)
    model = create_model(name, pretrained=False, image_size=size).eval()
    specs = [AttributeSpec("mass", "mass", ("mass",)), AttributeSpec("calcification", "calcification", ("calc",))]
    mapper = FactorMapper(specs, torch.randn(2, model.embed_dim), feature_shape(model, DEFAULT_TAP), size,
                          tap=DEFAULT_TAP)  # the default tap: what `factor train` builds
    explainer = Explainer(model, "factor", HeatmapContext(mapper.names, mapper=mapper))
    images = torch.randn(batch, 1, *size)
    explainer(images)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        heats, _ = explainer(images)
        for b in range(batch):
            for a in range(len(specs)):
                heat_regions(heats[b, a])
        times.append((time.perf_counter() - t0) / batch)
    return {"model": name, "size": f"{size[0]}x{size[1]}", "batch": batch, "attributes": len(specs),
            "median_s_per_image": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-b5", action="store_true")
    args = parser.parse_args()
    rows = [_case("mammoclip-lite", (256, 160), 1, args.repeats), _case("mammoclip-lite", (256, 160), 8, args.repeats)]
    if not args.skip_b5:
        rows.append(_case("mammoclip-b5-paper", (1520, 912), 1, max(1, args.repeats // 2)))
    print(f"{'model':22s} {'size':10s} {'batch':>5s} {'s/image (median)':>17s} {'range':>17s}")
    for r in rows:
        print(f"{r['model']:22s} {r['size']:10s} {r['batch']:>5d} {r['median_s_per_image']:>17.4f} "
              f"{r['min_s']:>8.4f}-{r['max_s']:.4f}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(), "load": os.getloadavg(),
                               "threads": torch.get_num_threads(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
