"""OpenCV drawing the visualization benchmark's scene, for `--bench render_peer`.

Usage: opencv_render.py SCENE.json

The scene file (written by the Rust bench) names the base image as raw RGB bytes and lists the
cells: outline, holes, and the label's text, centre and disc radius. The workload is the usual
OpenCV recipe for a translucent overlay, every call anti-aliased (cv2.LINE_AA):

  fillPoly (cells, holes left open by the even-odd rule) and fillPoly (holes) on a copy,
  addWeighted back over the image, polylines (outlines), circle (label discs), putText (numbers).

"render" starts from a fresh copy of the base image, as the Rust side's `render_visualization`
clones it; "render + PNG" adds cv2.imencode('.png') at OpenCV's default settings. Prints one
JSON line with the medians in milliseconds, of wall time and of the thread's CPU time
(time.thread_time). OpenCV runs on one thread (cv2.setNumThreads(1)).
"""

import json
import statistics
import sys
import time

import cv2
import numpy as np

# Fixed-point bits for sub-pixel coordinates in fillPoly, polylines and circle.
SHIFT = 4
SCALE = 1 << SHIFT


def fixed(points):
    return np.round(np.asarray(points, dtype=np.float64) * SCALE).astype(np.int32)


def load(path):
    with open(path) as f:
        scene = json.load(f)
    width, height = scene["width"], scene["height"]
    rgb = np.fromfile(scene["base"], dtype=np.uint8).reshape(height, width, 3)
    base = np.ascontiguousarray(rgb[:, :, ::-1])  # OpenCV images are BGR
    bgr = lambda c: tuple(int(v) for v in reversed(c))  # noqa: E731
    options = scene["options"]
    cells = scene["cells"]
    externals = [fixed(c["external"]) for c in cells]
    holes = [fixed(h) for c in cells for h in c["holes"]] + [
        fixed(h) for h in scene["orphan_holes"]
    ]
    cell_rings = [fixed(r) for c in cells for r in [c["external"], *c["holes"]]]
    labels = [
        (c["label"]["text"], c["label"]["x"], c["label"]["y"], c["label"]["radius"])
        for c in cells
    ]
    return {
        "base": base,
        "runs": scene["runs"],
        "external": bgr(options["external"]),
        "internal": bgr(options["internal"]),
        "alpha": options["alpha"],
        "stroke": options["stroke_width"],
        "font_size": options["font_size"],
        "externals": externals,
        "holes": holes,
        "cell_rings": cell_rings,
        "labels": labels,
    }


def render(s):
    image = s["base"].copy()
    alpha = s["alpha"]
    if alpha > 0:
        overlay = image.copy()
        cv2.fillPoly(overlay, s["cell_rings"], s["external"], cv2.LINE_AA, SHIFT)
        if s["holes"]:
            cv2.fillPoly(overlay, s["holes"], s["internal"], cv2.LINE_AA, SHIFT)
        cv2.addWeighted(overlay, alpha, image, 1.0 - alpha, 0.0, dst=image)
    cv2.polylines(image, s["externals"], True, s["external"], s["stroke"], cv2.LINE_AA, SHIFT)
    if s["holes"]:
        cv2.polylines(image, s["holes"], True, s["internal"], s["stroke"], cv2.LINE_AA, SHIFT)
    # FONT_HERSHEY_SIMPLEX digits are about 22 px tall at scale 1, DejaVu's about 0.73 em.
    font_scale = s["font_size"] * 0.73 / 22.0
    for text, x, y, radius in s["labels"]:
        centre = (int(round(x * SCALE)), int(round(y * SCALE)))
        cv2.circle(image, centre, int(round(radius * SCALE)), (255, 255, 255), -1, cv2.LINE_AA, SHIFT)
        (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 2)
        origin = (int(round(x - w / 2)), int(round(y + h / 2)))
        cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, font_scale, (20, 20, 20), 2, cv2.LINE_AA)
    return image


def measure(f, runs):
    """Medians of wall and thread CPU time over `runs` calls of `f`, after three to warm up."""
    for _ in range(3):
        f()
    wall, cpu = [], []
    for _ in range(runs):
        start, cpu_start = time.perf_counter(), time.thread_time()
        f()
        cpu.append((time.thread_time() - cpu_start) * 1e3)
        wall.append((time.perf_counter() - start) * 1e3)
    return {"wall_ms": round(statistics.median(wall), 3), "cpu_ms": round(statistics.median(cpu), 3)}


def main():
    cv2.setNumThreads(1)
    s = load(sys.argv[1])
    png = cv2.imencode(".png", render(s))[1]
    render_figures = measure(lambda: render(s), s["runs"])
    render_png_figures = measure(lambda: cv2.imencode(".png", render(s)), s["runs"])
    print(
        json.dumps(
            {
                "peer": "opencv",
                "version": cv2.__version__,
                "threads": cv2.getNumThreads(),
                "runs": s["runs"],
                "render": render_figures,
                "render_png": render_png_figures,
                "png_bytes": int(png.size),
            }
        )
    )


if __name__ == "__main__":
    main()
