fn main() { eprintln!("loralab-sidecar: not implemented yet (see the sidecar issue); use the in-process addon on CPU"); std::process::exit(2); }
