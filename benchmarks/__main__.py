"""python -m benchmarks (make bench): every performance figure the docs quote, in one run on one machine.

Writes docs/performance.json, docs/latency.png, and renders docs/performance.md and the quoted
blocks of README.md and other docs from that JSON (benchmarks/figures.py). Measured here: inference
(benchmarks here), the status page (status_page.py), the 24-hour simulation (day24h.toml) and the
event-log check (log_check.py, on a 20,000-event log; its 100,000-event run is separate:
python -m benchmarks.log_check). Reported as ratios against
baselines measured in the same run: Keras model.predict and the seed ResNet50 int8 for inference, a
bare LiteRT invoke() for the edge loop, a bare LiteRT + OpenCV process for memory and start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "tests" / "data" / "waste6"
SAMPLES = ROOT / "edge" / "demo" / "samples"
DEMO = ROOT / "edge" / "demo" / "demo_int8.tflite"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def timeit(fn, n: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    t = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return float(np.median(t) * 1000)


def child(code: str, *args: str) -> dict:
    """Run code in a fresh interpreter; it prints one JSON line (with its own peak RSS)."""
    out = subprocess.run([sys.executable, "-c", PEAK + textwrap.dedent(code), *args], capture_output=True, text=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "GPIOZERO_PIN_FACTORY": "mock"})
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(out.stderr[-2000:])


BARE = """
import json, resource, sys, time
t0 = time.perf_counter()
import cv2, numpy as np
from ai_edge_litert.interpreter import Interpreter
it = Interpreter(model_path=sys.argv[1], num_threads=2); it.allocate_tensors()
i = it.get_input_details()[0]
x = np.zeros(i["shape"], i["dtype"])
for _ in range(int(sys.argv[2])):
    it.set_tensor(i["index"], x); it.invoke()
    if _ == 0: first = time.perf_counter() - t0
print(json.dumps({"rss_mb": peak_rss_mb(), "first_s": first}))
"""

# ru_maxrss survives exec (it would report the parent's peak); VmHWM is this process's own.
PEAK = """
def peak_rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""

EDGE = """
import json, resource, sys, time, tempfile
t0 = time.perf_counter()
from ecosorter.edge.config import load_config
from ecosorter.edge.sorter import build_sorter
cfg = load_config(overrides={"camera.source": "folder", "camera.device": sys.argv[3], "model.path": sys.argv[1],
                             "model.num_threads": 2, "hardware.pin_factory": "mock", "hardware.led_on_s": 0.0,
                             "status.enabled": False})
first = []
with build_sorter(cfg, state_dir=tempfile.mkdtemp()) as s:
    s.run(max_items=int(sys.argv[2]), on_event=lambda e: first.append(time.perf_counter() - t0))
print(json.dumps({"rss_mb": peak_rss_mb(), "first_s": first[0]}))
"""

TF_PROC = """
import json, resource, sys, os
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, tf_keras
m = tf_keras.models.load_model(sys.argv[1], compile=False)
x = np.zeros((1, 224, 224, 3), np.float32)
for _ in range(3): m.predict(x, verbose=0)
print(json.dumps({"rss_mb": peak_rss_mb()}))
"""


def interleaved(a, b, n: int, warmup: int = 3) -> tuple[float, float]:
    """Medians of a() and b() called in turn, so that noise from other jobs hits both alike."""
    for _ in range(warmup):
        a()
        b()
    ta, tb = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        a()
        t1 = time.perf_counter()
        b()
        t2 = time.perf_counter()
        ta.append((t1 - t0) * 1000)
        tb.append((t2 - t1) * 1000)
    return float(np.median(ta)), float(np.median(tb))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks",
                                 description="Measure everything once; write docs/performance.json and render the docs")
    ap.add_argument("--iterations", type=int, default=30, help="timed runs per measure (default 30)")
    ap.add_argument("--modes", default="int8", help="seed ResNet50 modes: int8 (default) or a comma list of "
                                                    "float32,float16,dynamic,int8 (each converted once, cached)")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "bench", help="converted models are cached here")
    ap.add_argument("--out", type=Path, default=ROOT / "docs", help="where performance.json/.md and latency.png go")
    ap.add_argument("--load", default="", help="what else ran on the machine (written beside the figures)")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    load0 = os.getloadavg()[0]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    import tf_keras

    from benchmarks.figures import write_docs
    from benchmarks.log_check import LOG_CHECK_EVENTS
    from benchmarks.log_check import measure as log_check
    from benchmarks.status_page import measure as status_page
    from ecosorter.convert import convert
    from ecosorter.convert.demo.seed_model import build_seed_model
    from ecosorter.convert.images import TrainingTransform
    from ecosorter.edge.backends import open_classifier
    from ecosorter.edge.model import load_model
    from ecosorter.edge.preprocess import Preprocessor, decode_image
    from ecosorter.edge.preprocess.spec import PRESETS
    from ecosorter.edge.simulate import run_scenario

    args.work.mkdir(parents=True, exist_ok=True)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if "int8" not in modes:
        modes.append("int8")  # the demo comparison needs it
    n = args.iterations
    cores = os.cpu_count() or 1
    model = build_seed_model(tf_keras)
    h5 = args.work / "seed.h5"
    model.save(h5)
    photo_path = sorted(PHOTOS.glob("*/*.jpg"))[0]
    x = TrainingTransform(PRESETS["caffe"], 224, 224)(photo_path)[None]
    r: dict = {"cpu": cpu_name(), "machine": f"{platform.machine()}, {cores} cores", "cores": cores,
               "python": platform.python_version(), "tensorflow": tf.__version__,
               "litert": _version("ai-edge-litert"), "date": time.strftime("%Y-%m-%d"), "iterations": n,
               "inference_ms": {}, "size_mb": {"keras .h5 (resnet50)": round(h5.stat().st_size / 1e6, 1)}}
    lat = r["inference_ms"]
    lat["keras model.predict (resnet50)"] = timeit(lambda: model.predict(x, verbose=0), n)
    fn = tf.function(lambda t: model(t, training=False), autograph=False)
    lat["keras tf.function (resnet50)"] = timeit(lambda: fn(x), n)

    tensors: dict[str, np.ndarray] = {}
    files = {"demo": DEMO}
    for mode in modes:
        out = args.work / f"seed_{mode}.tflite"
        if not out.exists():
            convert(h5, out, mode, calibration=PHOTOS, calibration_size=36, validation=PHOTOS, validation_size=12,
                    force=True, min_agreement=0.0, gate="agreement", progress=False, log=lambda *a: None)
        files[f"resnet50 {mode}"] = out
    for name, path in files.items():
        r["size_mb"][f"tflite {name}" + (" int8" if name == "demo" else "")] = round(path.stat().st_size / 1e6, 1)
        with load_model(path) as m:
            tensors[name] = Preprocessor(m.manifest.preprocess, m.manifest.input)(decode_image(photo_path), "rgb")
    for threads in sorted({1, cores}):
        for mode in modes:
            if mode == "int8":
                continue
            c = open_classifier(files[f"resnet50 {mode}"].read_bytes(), "litert", threads)
            lat[f"litert resnet50 {mode} ({threads} thr)"] = timeit(lambda c=c, m=mode: c.classify(tensors[f"resnet50 {m}"]), n)
            c.close()
        a = open_classifier(DEMO.read_bytes(), "litert", threads)
        b = open_classifier(files["resnet50 int8"].read_bytes(), "litert", threads)
        la, lb = interleaved(lambda a=a: a.classify(tensors["demo"]),
                             lambda b=b: b.classify(tensors["resnet50 int8"]), n)
        a.close()
        b.close()
        lat[f"litert resnet50 int8 ({threads} thr)"], lat[f"litert demo int8 ({threads} thr)"] = lb, la

    # preprocessing a 640x480 camera frame, and the whole loop per item vs a bare invoke()
    import cv2

    frames = [cv2.resize(np.ascontiguousarray(decode_image(p)[..., ::-1]), (640, 480))
              for p in sorted(SAMPLES.glob("*.jpg"))]
    with load_model(DEMO, num_threads=cores) as m:
        prep = Preprocessor(m.manifest.preprocess, m.manifest.input)
        r["preprocess_640x480_ms"] = timeit(lambda: prep(frames[0], "bgr"), 200)
    r["loop"] = {"demo": loop_overhead(DEMO, frames, max(n, 40)),
                 "resnet50": loop_overhead(files["resnet50 int8"], frames, max(n, 40))}

    # memory and start-up: edge process vs bare LiteRT+OpenCV vs TensorFlow
    r["process"] = {"bare_litert_opencv": child(BARE, str(DEMO), "5"),
                    "ecosorter_edge": child(EDGE, str(DEMO), "3", str(SAMPLES)),
                    "tensorflow_keras": child(TF_PROC, str(h5))}
    r["idle"] = idle_cpu(DEMO)  # an empty tray: CPU use, and no inference at all

    day = run_scenario(ROOT / "benchmarks" / "day24h.toml").summary
    r["day24h"] = {k: day[k] for k in ("virtual_s", "wall_s", "items", "holds", "faults")}
    r["status_page"] = status_page()
    # the periodic event-log check against one append, on a LOG_CHECK_EVENTS log on this disk (not /tmp)
    r["log_check"] = log_check(LOG_CHECK_EVENTS, 5, args.work)
    r["wall_s"] = round(time.perf_counter() - t_start, 1)
    r["load"] = args.load or (f"a shared machine: other jobs ran during this run (1-minute load average "
                              f"{load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, on {cores} cores); "
                              "figures move by 10% or more between runs")

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "performance.json").write_text(json.dumps(r, indent=1) + "\n")
    plot(r, args.out / "latency.png")
    write_docs(r)
    print((args.out / "performance.md").read_text())
    return 0


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def loop_overhead(model: Path, frames: list, n: int) -> dict:
    """Per item: the real Sorter.process (trigger, preprocess, classify, vote, route, SQLite commit,
    status board) against a bare classify() of the same tensor, interleaved so noise hits both."""
    from ecosorter.edge.config import load_config
    from ecosorter.edge.sorter import build_sorter
    from ecosorter.edge.sources.base import Frame

    cfg = load_config(overrides={"model.path": str(model), "hardware.pin_factory": "mock", "hardware.led_on_s": 0.0,
                                 "trigger.mode": "always", "decision.frames": 1, "status.enabled": False,
                                 "record.capture": "none"})
    with build_sorter(cfg, state_dir=Path(tempfile.mkdtemp())) as s:
        tensors = [s.preprocessor(f, "bgr") for f in frames]
        loop, bare = [], []
        for i in range(n + 3):
            f = Frame(frames[i % len(frames)], "bgr", time.monotonic(), i)
            t0 = time.perf_counter()
            assert s.process(f) is not None
            t1 = time.perf_counter()
            s.model.classifier.classify(tensors[i % len(frames)])
            t2 = time.perf_counter()
            if i >= 3:
                loop.append((t1 - t0) * 1000)
                bare.append((t2 - t1) * 1000)
    lm, bm = float(np.median(loop)), float(np.median(bare))
    return {"items": n, "loop_ms_per_item": lm, "bare_invoke_ms": bm, "overhead": lm / bm - 1}


def idle_cpu(model: Path, seconds: float = 5.0) -> dict:
    """15 fps of an empty tray through the real loop: CPU time used and inferences run."""
    import threading

    from ecosorter.edge.config import load_config
    from ecosorter.edge.sorter import build_sorter
    from ecosorter.edge.sources.base import Frame
    from ecosorter.edge.sources.folder import EMPTY_TRAY_RGB

    cfg = load_config(overrides={"model.path": str(model), "hardware.pin_factory": "mock", "status.enabled": False})
    empty = np.empty((480, 640, 3), np.uint8)
    empty[:] = EMPTY_TRAY_RGB
    rng = np.random.default_rng(0)
    frames = [np.clip(empty + rng.integers(-2, 3, empty.shape), 0, 255).astype(np.uint8) for _ in range(8)]
    with build_sorter(cfg, state_dir=Path(tempfile.mkdtemp())) as s:
        stop = threading.Event()
        t0, c0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        i = 0
        while time.perf_counter() - t0 < seconds:
            s.process(Frame(frames[i % 8], "bgr", time.monotonic(), i))
            i += 1
            time.sleep(max(0.0, t0 + i / 15 - time.perf_counter()))
        c1 = resource.getrusage(resource.RUSAGE_SELF)
        stop.set()
        cpu = (c1.ru_utime - c0.ru_utime + c1.ru_stime - c0.ru_stime) / (time.perf_counter() - t0)
        return {"fps": 15, "frames": i, "inferences": s.summary.inferences, "cpu_of_one_core": cpu}


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = sorted(r["inference_ms"].items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.barh([k for k, _ in items], [v for _, v in items], color=["#2e7d32" if "litert" in k else "#9e9e9e" for k, _ in items])
    ax.set_xlabel("ms per image (median)")
    ax.set_title(f"Per image, {r['cpu']} ({r['machine']}), {r['date']}")
    for i, (_, v) in enumerate(items):
        ax.text(v, i, f" {v:.0f}", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
