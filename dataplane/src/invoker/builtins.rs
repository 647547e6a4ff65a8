//! Running the built-in functions: their output comes from the pipeline rules
//! ([`Builtin::output`]); the CPU time a function spends ([`Builtin::cpu_time`], `spin`'s busy
//! work) is spent here, by the invoker, as CPU work rather than wall time (a descheduled
//! function is not done early).

use conveyor_core::pipeline::{Builtin, Output};

/// Runs `f` on `input`: spends its CPU time, then returns its output.
pub fn run(f: &Builtin, input: &[u8]) -> Output {
    if let Some(cpu) = f.cpu_time() {
        crate::sys::burn_cpu(cpu);
    }
    f.output(input)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spin_spends_its_cpu_time() {
        let t = crate::sys::thread_cpu_time();
        let out = run(&Builtin::Spin { us: 2000 }, b"in");
        assert!(crate::sys::thread_cpu_time() - t >= std::time::Duration::from_micros(2000));
        assert_eq!(out.payload, b"in".to_vec());
    }
}
