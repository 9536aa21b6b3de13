//! loralab-sidecar: the engine in its own process, behind line-delimited JSON on stdio
//! (loralab_core::api, docs/sidecar-protocol.md). Bun spawns it for `device = "cuda"` runs,
//! and the server for every run, so a crash never takes the Bun process down.
//!
//! A transport only: stdin carries one request per line, stdout one answer line at a time
//! (logs go to stderr). The reader answers `cancel` at once and queues every other request
//! for one worker thread, in arrival order (one device, one queue).
//!
//! SIGTERM or SIGINT (Slurm preempting a job, systemd stopping a service, Ctrl-C reaching the
//! whole process group) stops it gracefully: a running train stops after its current step and
//! checkpoints, every request in hand is answered (a train as `cancelled`), then it exits. A
//! second signal exits at once (exit status 128 + the signal: 143 for SIGTERM, 130 for SIGINT),
//! without waiting for the step.
use loralab_core::api::{self, Request, Session};
use serde_json::{json, Value};
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};

/// Requests taken and not yet answered, and whether a signal asked for the exit. Taking a
/// request and a signal's decision to exit hold GATE, so a request is either counted before
/// the signal looks or sees STOPPING and is cancelled.
static IN_HAND: AtomicUsize = AtomicUsize::new(0);
static STOPPING: AtomicBool = AtomicBool::new(false);
static GATE: Mutex<()> = Mutex::new(());

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Write one whole line; a closed stdout means Bun is gone and nothing is listening.
fn emit(out: &Mutex<std::io::Stdout>, line: &str) {
    let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
    if writeln!(o, "{line}").and_then(|_| o.flush()).is_err() {
        std::process::exit(0);
    }
}

/// Exit between lines: with stdout held, so no other thread is halfway through one.
fn exit_between_lines(out: &Mutex<std::io::Stdout>, code: i32) -> ! {
    let _held = out.lock().unwrap_or_else(|p| p.into_inner());
    std::process::exit(code)
}

fn main() {
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let session = Arc::new(Session::new());
    // panics are answered as `internal` failures; their report goes to stderr only
    std::panic::set_hook(Box::new(|info| eprintln!("loralab-sidecar: {info}")));
    let ready = json!({"v": api::PROTOCOL, "event": "ready", "protocol": api::PROTOCOL,
        "version": env!("CARGO_PKG_VERSION"), "pid": std::process::id(),
        "devices": loralab_core::device::available()});
    emit(&out, &ready.to_string());

    let (tx, rx) = mpsc::channel::<(Value, Request)>();
    let worker = {
        let (out, session) = (out.clone(), session.clone());
        std::thread::spawn(move || {
            for (id, req) in rx {
                let reply = session.dispatch(&id, req, &|ev| emit(&out, &api::event_line(&id, ev)));
                emit(&out, &api::reply_line(&id, &reply));
                let _gate = GATE.lock().unwrap_or_else(|p| p.into_inner());
                if IN_HAND.fetch_sub(1, Ordering::SeqCst) == 1 && STOPPING.load(Ordering::SeqCst) {
                    exit_between_lines(&out, 0);
                }
            }
        })
    };
    {
        let (out, session) = (out.clone(), session.clone());
        match signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT]) {
            Ok(mut signals) => {
                std::thread::spawn(move || {
                    for signal in signals.forever() {
                        let gate = GATE.lock().unwrap_or_else(|p| p.into_inner());
                        if STOPPING.swap(true, Ordering::SeqCst) {
                            eprintln!("loralab-sidecar: a second signal: exiting now, without waiting for the step");
                            // as a shell reports a process the signal ended: 128 + its number
                            exit_between_lines(&out, 128 + signal);
                        }
                        session.cancel_all();
                        if IN_HAND.load(Ordering::SeqCst) == 0 {
                            exit_between_lines(&out, 0);
                        }
                        drop(gate);
                    }
                });
            }
            Err(e) => eprintln!("loralab-sidecar: signals not handled ({e}): SIGTERM ends it without a checkpoint"),
        }
    }
    let mut shutdown = None;
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        match api::parse_line(&line) {
            (id, Ok(Request::Shutdown(_))) => {
                shutdown = Some(id);
                break;
            }
            (id, Ok(req @ Request::Cancel(_))) => {
                let reply = session.dispatch(&id, req, &|_| {});
                emit(&out, &api::reply_line(&id, &reply));
            }
            (id, Ok(req)) => {
                {
                    let _gate = GATE.lock().unwrap_or_else(|p| p.into_inner());
                    IN_HAND.fetch_add(1, Ordering::SeqCst);
                    session.register(&id); // a cancel for it counts from now, queued or running
                    if STOPPING.load(Ordering::SeqCst) {
                        session.cancel_all(); // taken after the signal: cancelled too
                    }
                }
                if tx.send((id, req)).is_err() {
                    break;
                }
            }
            (id, Err(f)) => emit(&out, &api::reply_line(&id, &Err(f))),
        }
    }
    // shutdown or end of input (Bun went away): a running train stops after its step and
    // checkpoints; queued requests still run and answer; then exit
    session.cancel_all();
    drop(tx);
    let _ = worker.join();
    if let Some(id) = shutdown {
        let reply = session.dispatch(&id, Request::Shutdown(Default::default()), &|_| {});
        emit(&out, &api::reply_line(&id, &reply));
    }
}
