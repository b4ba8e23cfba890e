//! Cleanup on SIGINT and SIGTERM: folders registered here are removed
//! before the process dies of the signal (as it would without this).
//!
//! The signals are blocked in every thread and one thread waits for them
//! with `sigwait`, so the cleanup runs as ordinary code, not in a signal
//! handler.

use std::path::PathBuf;
use std::sync::{Mutex, Once};

static PATHS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static INSTALL: Once = Once::new();

fn signals() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set before it is read.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}

/// Starts the cleanup thread. Call it before the command starts any other
/// thread: threads inherit the calling thread's blocked signals, and a
/// thread that does not block them would die of them without cleaning up.
pub fn install() {
    INSTALL.call_once(|| {
        let set = signals();
        // SAFETY: changes only this thread's signal mask.
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        std::thread::spawn(move || {
            let mut sig = 0;
            // SAFETY: waits for one of the blocked signals.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                return;
            }
            let paths = PATHS.lock().map(|p| p.clone()).unwrap_or_default();
            for p in paths {
                let _ = std::fs::remove_dir_all(p);
            }
            // SAFETY: restores the default action and delivers the signal
            // again, so the process ends as the signal asked.
            unsafe {
                libc::signal(sig, libc::SIG_DFL);
                libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
                libc::raise(sig);
            }
        });
    });
}

/// Removes `path` if the process is interrupted while the guard lives.
pub fn remove_on_interrupt(path: PathBuf) -> Guard {
    if let Ok(mut p) = PATHS.lock() {
        p.push(path.clone());
    }
    Guard(path)
}

/// Unregisters its path when dropped.
pub struct Guard(PathBuf);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(mut p) = PATHS.lock() {
            p.retain(|x| x != &self.0);
        }
    }
}
