//! Run control shared by the vCPU threads, the thread that runs the VM and the API: stop (with
//! its reason and failure report), pause and resume.
//!
//! Pausing: the API sets `paused` and wakes the VM thread through `kick_evt`; that thread kicks
//! every vCPU out of KVM_RUN (it owns their handles); each vCPU parks in `park_if_paused` and
//! the API returns once all of them are parked, so no exit happens while paused.
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use super::exit::StopReason;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    #[error("the VM is stopping")]
    Stopping,
    #[error("the vCPUs did not pause within {0:?}")]
    PauseTimeout(Duration),
}

#[derive(Default)]
struct RunState {
    paused: bool,
    parked: usize,
}

/// State shared by the vCPUs and the threads that control them.
pub struct VmControl {
    stopping: AtomicBool,
    reason: Mutex<Option<StopReason>>,
    report: Mutex<Option<String>>,
    stop_evt: EventFd,
    /// Readable when the vCPUs must be kicked (pause).
    kick_evt: EventFd,
    run: Mutex<RunState>,
    /// `run.paused`, readable without the lock: a vCPU looks at it after every exit.
    pause_requested: AtomicBool,
    changed: Condvar,
    /// vCPU threads currently running their loop.
    running: AtomicUsize,
    /// When a vCPU first entered KVM_RUN (the end of the VMM's start).
    first_run: OnceLock<Instant>,
}

impl VmControl {
    pub fn new() -> io::Result<Self> {
        Ok(VmControl {
            stopping: AtomicBool::new(false),
            reason: Mutex::new(None),
            report: Mutex::new(None),
            stop_evt: EventFd::new(libc::EFD_NONBLOCK)?,
            kick_evt: EventFd::new(libc::EFD_NONBLOCK)?,
            run: Mutex::new(RunState::default()),
            pause_requested: AtomicBool::new(false),
            changed: Condvar::new(),
            running: AtomicUsize::new(0),
            first_run: OnceLock::new(),
        })
    }

    fn state(&self) -> MutexGuard<'_, RunState> {
        self.run.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the VM to stop; the first reason given is the one reported.
    pub fn request_stop(&self, reason: StopReason) {
        {
            let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
            if r.is_none() {
                *r = Some(reason);
            }
        }
        // Under the run lock, so that a vCPU about to park sees the stop.
        let _state = self.state();
        self.stopping.store(true, Ordering::SeqCst);
        self.changed.notify_all();
        // The eventfd counter cannot overflow with one write per stop request.
        let _ = self.stop_evt.write(1);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    pub fn reason(&self) -> Option<StopReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Keeps the first vCPU report (registers and code at RIP) of a failed guest.
    pub fn set_report(&self, report: String) {
        let mut r = self.report.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            *r = Some(report);
        }
    }

    pub fn report(&self) -> Option<String> {
        self.report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Readable once a stop was requested (never read: every waiter polls it).
    pub fn stop_evt(&self) -> &EventFd {
        &self.stop_evt
    }

    /// Readable when the VM thread must kick the vCPUs; it reads it to clear it.
    pub fn kick_evt(&self) -> &EventFd {
        &self.kick_evt
    }

    /// A vCPU is about to enter KVM_RUN for the first time; the first such moment is kept.
    pub fn note_first_run(&self) {
        self.first_run.get_or_init(Instant::now);
    }

    /// When a vCPU first entered KVM_RUN (`None`: none has yet).
    pub fn first_run(&self) -> Option<Instant> {
        self.first_run.get().copied()
    }

    /// A vCPU thread starts (`true`) or ends (`false`) its loop.
    pub fn vcpu_running(&self, running: bool) {
        let _state = self.state();
        if running {
            self.running.fetch_add(1, Ordering::SeqCst);
        } else {
            self.running.fetch_sub(1, Ordering::SeqCst);
        }
        self.changed.notify_all();
    }

    pub fn is_paused(&self) -> bool {
        self.state().paused
    }

    /// Pauses the vCPUs and waits until every running vCPU is parked outside KVM_RUN.
    pub fn pause(&self, timeout: Duration) -> Result<(), ControlError> {
        let mut state = self.state();
        if self.is_stopping() {
            return Err(ControlError::Stopping);
        }
        state.paused = true;
        // Set before the kick: a vCPU that misses it re-enters KVM_RUN only to be kicked out.
        self.pause_requested.store(true, Ordering::SeqCst);
        let _ = self.kick_evt.write(1);
        let (state, result) = self
            .changed
            .wait_timeout_while(state, timeout, |s| {
                !self.is_stopping() && s.parked < self.running.load(Ordering::SeqCst)
            })
            .unwrap_or_else(|e| e.into_inner());
        drop(state);
        if self.is_stopping() {
            Err(ControlError::Stopping)
        } else if result.timed_out() {
            Err(ControlError::PauseTimeout(timeout))
        } else {
            Ok(())
        }
    }

    /// Lets parked vCPUs run again.
    pub fn resume(&self) -> Result<(), ControlError> {
        let mut state = self.state();
        if self.is_stopping() {
            return Err(ControlError::Stopping);
        }
        state.paused = false;
        self.pause_requested.store(false, Ordering::SeqCst);
        self.changed.notify_all();
        Ok(())
    }

    /// Called by a vCPU between exits: blocks while the VM is paused and not stopping. Without
    /// a pause this is one atomic load, no lock.
    pub fn park_if_paused(&self) {
        if !self.pause_requested.load(Ordering::SeqCst) {
            return;
        }
        let mut state = self.state();
        if !state.paused || self.is_stopping() {
            return;
        }
        state.parked += 1;
        self.changed.notify_all();
        while state.paused && !self.is_stopping() {
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.parked -= 1;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn first_stop_reason_wins() {
        let c = VmControl::new().unwrap();
        c.request_stop(StopReason::Poweroff);
        c.request_stop(StopReason::Reset);
        assert_eq!(c.reason(), Some(StopReason::Poweroff));
        assert!(c.is_stopping());
        assert_eq!(
            c.pause(Duration::from_millis(10)),
            Err(ControlError::Stopping)
        );
    }

    #[test]
    fn pause_waits_for_every_vcpu_to_park_and_resume_releases_them() {
        let c = Arc::new(VmControl::new().unwrap());
        let passes = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let c = c.clone();
                let passes = passes.clone();
                c.vcpu_running(true);
                std::thread::spawn(move || {
                    while !c.is_stopping() {
                        c.park_if_paused();
                        passes.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    c.vcpu_running(false);
                })
            })
            .collect();
        c.pause(Duration::from_secs(5)).unwrap();
        assert_eq!(c.kick_evt().read().unwrap(), 1);
        let before = passes.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(
            passes.load(Ordering::SeqCst),
            before,
            "a vCPU ran while paused"
        );
        c.resume().unwrap();
        std::thread::sleep(Duration::from_millis(30));
        assert!(passes.load(Ordering::SeqCst) > before);
        // Stopping releases parked vCPUs too.
        c.pause(Duration::from_secs(5)).unwrap();
        c.request_stop(StopReason::Requested);
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn pause_times_out_when_a_vcpu_never_parks() {
        let c = VmControl::new().unwrap();
        c.vcpu_running(true);
        assert_eq!(
            c.pause(Duration::from_millis(20)),
            Err(ControlError::PauseTimeout(Duration::from_millis(20)))
        );
    }
}
