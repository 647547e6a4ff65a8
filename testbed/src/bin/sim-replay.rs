//! Replays one simulator seed and prints its configuration and outcome:
//! `cargo run -p conveyor-testbed --bin sim-replay -- SEED [--no-earlier-run]`
//! (`--no-earlier-run`: without the frames of an earlier run of the group, to tell whether
//! they are what a failure needs).

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(seed) = args.next().and_then(|s| s.parse::<u64>().ok()) else {
        eprintln!("usage: sim-replay SEED [--no-earlier-run]");
        std::process::exit(2);
    };
    let no_earlier = args.any(|a| a == "--no-earlier-run");
    let result = conveyor_testbed::sim::run_seed(seed, |cfg| {
        if no_earlier {
            cfg.earlier_run = 0;
        }
        println!("seed {seed}: {cfg:#?}");
    });
    match result {
        Ok(r) => println!("ok: {r:?}"),
        Err(v) => {
            println!("FAILED: {v}");
            std::process::exit(1);
        }
    }
}
