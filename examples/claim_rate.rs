//! The queue alone: how many jobs a second the journal hands out, as the daemon takes them
//! (reserve with `SKIP LOCKED`, start under a lease, finish), to `THREADS` hosts at once,
//! each on its own connection. No pixels, no files.
//!
//! ```sh
//! cargo run --release --example claim_rate -- postgresql://darkroom@127.0.0.1:5432/bench 4000 1,2,4,8
//! cargo run --release --example claim_rate -- sqlite:/tmp/bench-state 4000 1
//! ```
//!
//! Each round queues `JOBS` fresh jobs, then times the hosts draining them. `scripts/bench`
//! runs it against a throwaway PostgreSQL server.

use darkroom::daemon::journal::{FileIdentity, Kind, Location, Opening, Runnable, State, Store};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn opening(target: &str, host: &str) -> Opening {
    let (location, state_dir) = match target.strip_prefix("sqlite:") {
        Some(dir) => (Location::Sqlite, PathBuf::from(dir)),
        None => (
            Location::parse(target).expect("a postgresql:// URL or sqlite:DIR"),
            std::env::temp_dir(),
        ),
    };
    Opening {
        location,
        state_dir,
        host: host.to_string(),
        lease: Duration::from_secs(15),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [target, jobs, threads] = args.as_slice() else {
        eprintln!("usage: claim_rate (postgresql://URL | sqlite:DIR) JOBS THREADS[,THREADS...]");
        std::process::exit(2);
    };
    let jobs: u64 = jobs.parse().expect("JOBS is a number");
    if let Some(dir) = target.strip_prefix("sqlite:") {
        std::fs::create_dir_all(dir).expect("the SQLite state folder");
    }
    let setup = opening(target, "setup")
        .open("bench")
        .expect("open the journal");
    let mut round = 0u64;
    for threads in threads.split(',') {
        let threads: usize = threads.parse().expect("THREADS are numbers");
        round += 1;
        for i in 0..jobs {
            let identity = FileIdentity {
                path: PathBuf::from(format!("/bench/r{round}-t{threads}/{i:06}.png")),
                size: 1000 + i,
                mtime_ns: i as i64,
                inode: i,
                sha256: format!("{:064x}", round * 1_000_000 + i),
            };
            setup
                .insert("bench", Kind::Input, &identity, State::Queued)
                .expect("queue a job");
        }
        let done = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (target, done) = (target.clone(), Arc::clone(&done));
                std::thread::spawn(move || {
                    let store = opening(&target, &format!("host{t}"))
                        .open("bench")
                        .expect("open the journal");
                    loop {
                        let taken = store
                            .runnable(darkroom::io::clock::now(), 1, &Runnable::default())
                            .expect("take work");
                        let Some(job) = taken.into_iter().next() else {
                            return;
                        };
                        if store.start_attempt(job.id, State::Running).is_err() {
                            continue;
                        }
                        store
                            .job_done(job.id, Path::new("/bench/done"), "{}")
                            .expect("finish");
                        store.release_unstarted().expect("release");
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().expect("a worker panicked");
        }
        let seconds = started.elapsed().as_secs_f64();
        let finished = done.load(Ordering::Relaxed);
        assert_eq!(finished, jobs, "every job ran exactly once");
        println!(
            "{threads} hosts: {finished} jobs in {seconds:.2} s = {:.0} jobs/s",
            finished as f64 / seconds
        );
    }
}
