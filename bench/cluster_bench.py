#!/usr/bin/env python3
"""Cluster benchmark: several `darkroom serve` hosts on one PostgreSQL journal.

Starts a PostgreSQL server of its own (initdb and pg_ctl in a temp folder, as the postgres
user when run as root; Debian package postgresql) and measures, with the release binary:

  * split-to-proxy throughput on FILES photos (the 600x400 coffee photo, 512x512 proxies)
    dropped at once, with 1, 2 and 3 hosts (one worker each, host i pinned to core i mod
    the cores), and one host on the default SQLite journal: the PostgreSQL store's
    per-job overhead is the difference of the one-host times;
  * the queue alone (examples/claim_rate): jobs a second the journal hands out to 1, 2, 4
    and 8 hosts taking, starting and finishing jobs with no pixel work;
  * reclaim time after kill -9: a job at its tool (a tool that sleeps on its first call);
    the host holding it is killed, and the time until another host runs the job is taken,
    KILLS times (lease_timeout at its default, 15 s).

Standard library only. Usage:
  python3 bench/cluster_bench.py [--files 1000] [--kills 10] [--json OUT]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "target", "release", "darkroom")
CLAIM_RATE = os.path.join(ROOT, "target", "release", "examples", "claim_rate")
SHARED = os.environ.get("DARKROOM_SHARED", os.path.join(ROOT, "..", "shared"))
PHOTO = os.path.join(SHARED, "testdata", "photo_coffee_600x400.png")
CORES = os.cpu_count() or 1


class Postgres:
    """A throwaway server; `url(db)` names one of its databases."""

    def __init__(self):
        bins = sorted(
            os.path.join("/usr/lib/postgresql", v, "bin")
            for v in os.listdir("/usr/lib/postgresql")
        )
        self.bin = bins[-1]
        self.as_postgres = os.geteuid() == 0
        self.dir = tempfile.mkdtemp(prefix="darkroom-pg-bench-", dir="/tmp")
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        self.data = os.path.join(self.dir, "data")
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.run("initdb", "-D", self.data, "-U", "darkroom", "--auth=trust", "-E", "UTF8")
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=200"
        self.run("pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "log"), "-o", options, "-w", "start")

    def run(self, program, *args):
        command = [os.path.join(self.bin, program), *args]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, check=True, capture_output=True, text=True).stdout

    def psql(self, sql, db="postgres"):
        return self.run(
            "psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "darkroom", "-d", db, "-At", "-c", sql
        ).strip()

    def new_database(self, name):
        self.psql(f"CREATE DATABASE {name}")
        return f"postgresql://darkroom@127.0.0.1:{self.port}/{name}"

    def stop(self):
        self.run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


def host_config(tree, name, journal, daemon_extra="", rule_extra=""):
    path = os.path.join(tree, f"{name}.toml")
    journal_line = f'journal = "{journal}"\nhost = "{name}"\n' if journal else ""
    with open(path, "w") as f:
        f.write(
            f'[daemon]\nroot = "{tree}/var"\nstate_dir = "{tree}/state-{name}"\n'
            f'log_dir = "{tree}/logs-{name}"\n{journal_line}workers = 1\nlog_level = "info"\n'
            f'stability_window = "500ms"\n{daemon_extra}\n\n'
            f'[[rule]]\nname = "photos"\nrecipe = "split-to-proxy"\nsize = "512x512"\n{rule_extra}\n\n'
            f'[http]\nlisten = ""\n'
        )
    return path


def start_host(tree, name, config, core=None):
    log = open(os.path.join(tree, f"{name}.log"), "ab")
    command = [BINARY, "serve", "--config", config]
    if core is not None and shutil.which("taskset"):
        command = ["taskset", "-c", str(core), *command]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.time() + 60
    while b"darkroom is running" not in open(os.path.join(tree, f"{name}.log"), "rb").read():
        if time.time() > deadline or process.poll() is not None:
            raise SystemExit(f"host {name} did not start; see {tree}/{name}.log")
        time.sleep(0.05)
    return process


def count_files(folder):
    try:
        return sum(1 for n in os.listdir(folder) if not n.startswith("."))
    except FileNotFoundError:
        return 0


def throughput(pg, hosts, files):
    """Seconds from dropping `files` photos to the last proxy, with `hosts` hosts (0: one
    host on SQLite)."""
    tree = tempfile.mkdtemp(prefix="darkroom-cluster-bench-")
    journal = pg.new_database(f"tp{hosts}_{int(time.time())}") if hosts else None
    names = ["a", "b", "c"][: max(hosts, 1)]
    processes = [
        start_host(tree, n, host_config(tree, n, journal), core=i % CORES)
        for i, n in enumerate(names)
    ]
    staging = os.path.join(tree, "staging")
    inbox = os.path.join(tree, "var", "inbox", "photos")
    os.makedirs(staging)
    for i in range(files):
        shutil.copy(PHOTO, os.path.join(staging, f"p{i:05}.png"))
    started = time.time()
    for i in range(files):
        os.rename(os.path.join(staging, f"p{i:05}.png"), os.path.join(inbox, f"p{i:05}.png"))
    out = os.path.join(tree, "var", "exchange", "out", "photos")
    while count_files(out) < files:
        time.sleep(0.05)
    seconds = time.time() - started
    shares = []
    for n in names:
        text = open(os.path.join(tree, f"{n}.log"), errors="replace").read()
        shares.append(text.count("proxy written"))
    for p in processes:
        p.terminate()
        p.wait()
    shutil.rmtree(tree, ignore_errors=True)
    return seconds, shares


def claim_rate(pg, jobs):
    url = pg.new_database(f"claims_{int(time.time())}")
    text = subprocess.run(
        [CLAIM_RATE, url, str(jobs), "1,2,4,8"], check=True, capture_output=True, text=True
    ).stdout
    state = tempfile.mkdtemp(prefix="darkroom-claims-sqlite-")
    text += subprocess.run(
        [CLAIM_RATE, f"sqlite:{state}", str(jobs), "1"], check=True, capture_output=True, text=True
    ).stdout.replace("hosts:", "host (SQLite):")
    shutil.rmtree(state, ignore_errors=True)
    return text.strip().splitlines()


def reclaims(pg, kills):
    """Seconds from kill -9 of the host holding a job at its tool to another host starting
    it, `kills` times."""
    tree = tempfile.mkdtemp(prefix="darkroom-reclaim-bench-")
    journal = pg.new_database(f"reclaim_{int(time.time())}")
    db = journal.rsplit("/", 1)[1]
    tool = os.path.join(tree, "tool.sh")
    with open(tool, "w") as f:
        f.write(
            # Calls alternate: the first of each job sleeps (its host is killed), the
            # second (on the host that took the job over) copies at once.
            "#!/bin/sh\n"
            f'calls=$(ls "{tree}/calls" | wc -l); touch "{tree}/calls/$$"\n'
            'if [ $((calls % 2)) -eq 0 ]; then\n'
            f'  sleep 600 & echo $! >> "{tree}/sleepers"; wait\n'
            "fi\n"
            'cp "$1" "$2"\n'
        )
    os.chmod(tool, 0o755)
    os.makedirs(os.path.join(tree, "calls"))
    rule_extra = f'tool = "cmd({tool} %i %o)"\ncommand_timeout = "20m"'
    names = ["a", "b", "c"]
    configs = {n: host_config(tree, n, journal, rule_extra=rule_extra) for n in names}
    processes = {n: start_host(tree, n, configs[n]) for n in names}
    inbox = os.path.join(tree, "var", "inbox", "photos")
    times = []
    for k in range(kills):
        shutil.copy(PHOTO, os.path.join(tree, f".k{k}.png"))
        os.rename(os.path.join(tree, f".k{k}.png"), os.path.join(inbox, f"k{k}.png"))
        holder = ""
        deadline = time.time() + 120
        while not holder:
            if time.time() > deadline:
                raise SystemExit(f"no job reached its tool; see the logs in {tree}")
            holder = pg.psql(
                f"SELECT id || ' ' || leased_by FROM jobs WHERE state = 'at-tool' "
                f"AND claimed_path LIKE '%/k{k}.png'",
                db,
            )
            time.sleep(0.05)
        job, victim = holder.split()
        processes[victim].kill()
        killed = time.time()
        processes[victim].wait()
        while True:
            now = pg.psql(f"SELECT state || ' ' || coalesce(leased_by, '-') FROM jobs WHERE id = {job}", db)
            state, leased = now.split()
            if (state == "at-tool" and leased != victim) or state in ("awaiting-return", "done"):
                break
            time.sleep(0.05)
        times.append(time.time() - killed)
        processes[victim] = start_host(tree, victim, configs[victim])
    for p in processes.values():
        p.terminate()
        p.wait()
    # The killed hosts' tool calls outlive them; their sleeps are ended here.
    try:
        for pid in open(os.path.join(tree, "sleepers")).read().split():
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass
    except FileNotFoundError:
        pass
    shutil.rmtree(tree, ignore_errors=True)
    return times


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--claims", type=int, default=4000)
    parser.add_argument("--json")
    args = parser.parse_args()
    for needed in (BINARY, CLAIM_RATE):
        if not os.path.exists(needed):
            raise SystemExit(f"{needed} is missing: cargo build --release --examples --bins")
    pg = Postgres()
    results = {"files": args.files, "cores": CORES}
    try:
        print(f"split-to-proxy, {args.files} photos of 600x400 dropped at once, one worker per host:")
        results["throughput"] = {}
        for hosts in (0, 1, 2, 3):
            seconds, shares = throughput(pg, hosts, args.files)
            label = "1 host, SQLite" if hosts == 0 else f"{hosts} host{'s' if hosts > 1 else ''}, PostgreSQL"
            print(f"  {label}: {seconds:.1f} s = {args.files / seconds:.1f} files/s (proxies per host: {shares})")
            results["throughput"][label] = {"seconds": seconds, "per_host": shares}
        one_pg = results["throughput"]["1 host, PostgreSQL"]["seconds"]
        one_sqlite = results["throughput"]["1 host, SQLite"]["seconds"]
        overhead = (one_pg - one_sqlite) / args.files * 1000
        print(f"  PostgreSQL store against SQLite, one host: {overhead:+.1f} ms per job")
        results["pg_overhead_ms_per_job"] = overhead
        print(f"the queue alone ({args.claims} jobs; take, start, finish):")
        lines = claim_rate(pg, args.claims)
        for line in lines:
            print(f"  {line}")
        results["claim_rate"] = lines
        if args.kills == 0:
            return
        print(f"reclaim after kill -9 of the host running a job, {args.kills} kills (lease_timeout 15 s):")
        times = reclaims(pg, args.kills)
        print(
            f"  median {statistics.median(times):.1f} s, max {max(times):.1f} s, min {min(times):.1f} s"
        )
        results["reclaim_seconds"] = times
    finally:
        pg.stop()
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    import functools

    print = functools.partial(print, flush=True)  # noqa: A001 (progress as it comes)
    main()
