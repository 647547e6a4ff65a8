//! Replays one simulator seed and prints its configuration and outcome:
//! `cargo run -p conveyor-testbed --bin sim-replay -- SEED`.

fn main() {
    let Some(seed) = std::env::args().nth(1).and_then(|s| s.parse::<u64>().ok()) else {
        eprintln!("usage: sim-replay SEED");
        std::process::exit(2);
    };
    let cfg = conveyor_testbed::sim::SimConfig::from_seed(seed);
    println!("seed {seed}: {cfg:#?}");
    match conveyor_testbed::sim::Sim::new(seed, cfg).run() {
        Ok(r) => println!("ok: {r:?}"),
        Err(v) => {
            println!("FAILED: {v}");
            std::process::exit(1);
        }
    }
}
