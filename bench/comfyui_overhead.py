#!/usr/bin/env python3
"""What darkroom adds around a ComfyUI run: per job, the time of its tool stage (proxy read,
sRGB conversion, upload, submit, following the prompt, download, writing the returned
image) minus the time ComfyUI itself spent executing the prompt (its history's
execution_start to execution_success timestamps).

Starts ComfyUI (../shared/third_party/comfyui, from .venv-comfyui, on the CPU) and the release
`darkroom serve` on a temp tree with a split-to-proxy rule whose tool is the shipped
config/workflows/grade.json on a 1024x1024 proxy, then drops the 12-MP camera JPEG under N
names one at a time (each job alone, so no job waits in ComfyUI's queue behind another).
Reports the median and p95 of the overhead, and of ComfyUI's own time for scale.

Standard library only. Usage: python3 bench/comfyui_overhead.py [--jobs 50] [--json OUT]
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.environ.get("DARKROOM_BINARY", os.path.join(ROOT, "target", "release", "darkroom"))
SHARED = os.environ.get("DARKROOM_SHARED", os.path.join(ROOT, "..", "shared"))
PHOTO = os.path.join(SHARED, "testdata", "photo_bus_4032x3024_p3.jpg")
COMFY_PYTHON = os.path.join(ROOT, ".venv-comfyui", "bin", "python")

CONFIG = """
[daemon]
root = "var"
stability_window = "200ms"
log_level = "warn"

[[rule]]
name = "photos"
recipe = "split-to-proxy"
size = "1024x1024"
tool = {{ comfyui = "{url}", workflow = "{workflow}" }}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def wait_for(what, condition, patience=300):
    deadline = time.time() + patience
    while not condition():
        if time.time() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.05)


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--json")
    args = parser.parse_args()
    if not os.path.exists(COMFY_PYTHON):
        sys.exit("run scripts/setup-comfyui first")
    work = tempfile.mkdtemp(prefix="darkroom-comfy-bench-")
    base = os.path.join(work, "comfyui")
    for d in ["custom_nodes", "models", "input", "output", "temp", "user"]:
        os.makedirs(os.path.join(base, d))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    comfy_log = open(os.path.join(work, "comfyui.log"), "w")
    comfy = subprocess.Popen(
        [COMFY_PYTHON, "-B", os.path.join(SHARED, "third_party", "comfyui", "main.py"), "--cpu",
         "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
         "--base-directory", base],
        stdout=comfy_log, stderr=subprocess.STDOUT, start_new_session=True)
    daemon = None
    try:
        def answers():
            try:
                get_json(url + "/queue")
                return True
            except OSError:
                return False
        wait_for("ComfyUI to start", answers)
        config = os.path.join(work, "darkroom.toml")
        with open(config, "w") as f:
            f.write(CONFIG.format(url=url, workflow=os.path.join(ROOT, "config", "workflows", "grade.json")))
        daemon = subprocess.Popen([BINARY, "serve", "--config", config], cwd=work,
                                  stderr=open(os.path.join(work, "daemon.log"), "w"))
        inbox = os.path.join(work, "var", "inbox", "photos")
        metadata = os.path.join(work, "var", "metadata", "photos")
        wait_for("the daemon", lambda: os.path.isdir(inbox))
        overheads, comfy_times, totals = [], [], []
        for i in range(args.jobs):
            name = f"bus_{i:03d}"
            shutil.copy(PHOTO, os.path.join(inbox, f".{name}.tmp"))
            os.rename(os.path.join(inbox, f".{name}.tmp"), os.path.join(inbox, f"{name}.jpg"))
            sidecar = os.path.join(metadata, f"{name}.json")
            wait_for(f"job {name}", lambda: os.path.exists(sidecar))
            tool = json.load(open(sidecar))["proxy"]["tool"]
            history = get_json(f"{url}/history/{tool['prompt_id']}")[tool["prompt_id"]]
            stamps = {event: data.get("timestamp") for event, data in history["status"]["messages"]}
            ran = (stamps["execution_success"] - stamps["execution_start"]) / 1000.0
            total = tool["seconds"]["total"]
            overheads.append(total - ran)
            comfy_times.append(ran)
            totals.append(total)
            seconds = tool["seconds"]
            before = total - seconds["run"] - seconds["fetch"]
            print(f"{name}: tool stage {total:.3f} s, ComfyUI executing {ran:.3f} s, darkroom {total - ran:.3f} s"
                  f" (before submitting {before:.3f}, following {seconds['run'] - ran:.3f},"
                  f" fetching {seconds['fetch']:.3f})", flush=True)
        result = {
            "jobs": args.jobs,
            "proxy": "1024x1024 of a 4032x3024 Display P3 JPEG",
            "workflow": "config/workflows/grade.json",
            "overhead_seconds": {"median": statistics.median(overheads), "p95": percentile(overheads, 95)},
            "comfyui_seconds": {"median": statistics.median(comfy_times), "p95": percentile(comfy_times, 95)},
            "tool_stage_seconds": {"median": statistics.median(totals), "p95": percentile(totals, 95)},
        }
        print(json.dumps(result, indent=2))
        if args.json:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
    finally:
        if daemon:
            daemon.terminate()
            daemon.wait()
        os.killpg(comfy.pid, 9)
        comfy.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
