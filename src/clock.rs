//! CPU time of the calling thread, for splitting a stage's time between
//! threads that share the cores: wall time inside a thread counts the time
//! it waited for a core, CPU time does not.

/// CPU seconds (user and system) the calling thread has used so far.
pub fn thread_cpu_seconds() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for the call to fill in.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    if rc != 0 {
        return 0.0;
    }
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// Counts the calling thread's CPU seconds from its creation.
pub struct CpuTimer(f64);

impl CpuTimer {
    pub fn start() -> Self {
        CpuTimer(thread_cpu_seconds())
    }

    /// CPU seconds since [`CpuTimer::start`], on the same thread.
    pub fn seconds(&self) -> f64 {
        (thread_cpu_seconds() - self.0).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_work_not_sleep() {
        let t = CpuTimer::start();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let slept = t.seconds();
        let mut x = 0u64;
        let busy = CpuTimer::start();
        while busy.seconds() < 0.05 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        assert!(slept < 0.02, "sleeping used {slept} CPU seconds");
        assert!(t.seconds() >= 0.05);
    }
}
