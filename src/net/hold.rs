//! A transmit interrupt held behind a receive interrupt (`--net ...,txhold=US`, default 300).
//!
//! A transmit completion the driver asked an interrupt for (its `used_event`) is published at
//! once, as every completion is (see `tx`), but when it is the last of the worker's pass its
//! interrupt waits for one more look at the worker's events (an `epoll_wait` that does not
//! block). If that look brings a receive interrupt (a reply or an ACK the host's stack queued
//! during the `writev`: it usually did), the transmit interrupt is *held*: the driver's
//! receive handler sees the transmit completion too, and once it has taken it, it moves
//! `used_event` past it, so the interrupt is no longer wanted. Linux's `virtio_net` cleans its
//! transmit queue at the start of each receive poll (`virtnet_poll_cleantx`); the built-in
//! guest drains both used rings whenever it looks. A held interrupt is decided again, against
//! `used_event` as it is then, at the next transmit pass or when the hold expires (`txhold`
//! microseconds after it began), whichever comes first; it is sent if the driver still wants
//! it. A completion that another chain follows in the same pass gets its interrupt before that
//! chain's `writev` (the per-chain rule), and one that no receive interrupt follows gets it
//! after the one look.
//!
//! What it saves: one interrupt per request/reply round trip. The built-in guest's ping on the
//! PVM host takes 1 interrupt instead of 2 (each is ~55 µs of emulated CPL0 there); Linux's
//! TCP in the nested L1 takes a receive interrupt per ACK and no longer a transmit interrupt
//! next to it. What it costs: a driver that frees transmit buffers only in its transmit
//! interrupt handler gets that interrupt up to `txhold` late while receive traffic flows.

/// What the worker does once it has handled a batch of events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HoldStep {
    /// Wait for events (nothing to decide, or a hold whose timer runs).
    Wait,
    /// Look once more without blocking before deciding the transmit interrupt.
    Peek,
    /// Decide the transmit interrupt now.
    Decide,
    /// A hold began: start its timer, then wait.
    ArmTimer,
}

/// The transmit queue's interrupt that the driver wants and that was not sent yet.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TxHold {
    /// Wanted for a completion published after the last receive interrupt.
    uncovered: bool,
    /// A receive interrupt went out after it: held until the driver's receive handler took it.
    held: bool,
    /// The worker took its one look since `uncovered` was set.
    peeked: bool,
    /// The hold's timer runs.
    timer: bool,
}

impl TxHold {
    /// A completion was published that the driver wants an interrupt for.
    pub fn want(&mut self) {
        self.uncovered = true;
    }

    /// Whether a completion waits for its interrupt and no receive interrupt covers it.
    pub fn uncovered(&self) -> bool {
        self.uncovered
    }

    pub fn held(&self) -> bool {
        self.held
    }

    /// A receive interrupt went out. True when it starts holding a wanted transmit interrupt.
    pub fn rx_interrupt(&mut self) -> bool {
        if !self.uncovered {
            return false;
        }
        self.uncovered = false;
        let started = !self.held;
        self.held = true;
        started
    }

    /// The transmit interrupt was decided (sent, or found no longer wanted).
    pub fn decided(&mut self) {
        *self = TxHold::default();
    }

    /// The worker handled a batch of events.
    pub fn step(&mut self) -> HoldStep {
        if self.uncovered {
            if !self.peeked {
                self.peeked = true;
                return HoldStep::Peek;
            }
            return HoldStep::Decide;
        }
        self.peeked = false;
        if self.held && !self.timer {
            self.timer = true;
            return HoldStep::ArmTimer;
        }
        HoldStep::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receive_interrupt_after_the_look_holds_it() {
        let mut h = TxHold::default();
        assert_eq!(h.step(), HoldStep::Wait);
        h.want();
        assert_eq!(h.step(), HoldStep::Peek);
        // The look brought a reply: its interrupt covers the completion.
        assert!(h.rx_interrupt());
        assert!(h.held() && !h.uncovered());
        assert_eq!(h.step(), HoldStep::ArmTimer);
        assert_eq!(h.step(), HoldStep::Wait, "one timer per hold");
        // Another receive interrupt covers nothing new.
        assert!(!h.rx_interrupt());
        h.decided();
        assert_eq!(h, TxHold::default());
    }

    #[test]
    fn no_receive_interrupt_after_the_look_decides_it() {
        let mut h = TxHold::default();
        h.want();
        assert_eq!(h.step(), HoldStep::Peek);
        assert_eq!(h.step(), HoldStep::Decide);
        h.decided();
        assert_eq!(h.step(), HoldStep::Wait);
    }

    #[test]
    fn a_completion_after_the_hold_began_is_not_held_by_it() {
        let mut h = TxHold::default();
        h.want();
        assert!(h.rx_interrupt());
        assert_eq!(h.step(), HoldStep::ArmTimer);
        // A later completion wants its interrupt: it needs a receive interrupt of its own.
        h.want();
        assert_eq!(h.step(), HoldStep::Peek);
        assert_eq!(h.step(), HoldStep::Decide);
        // Or one comes: it joins the running hold (no second timer).
        let mut h = TxHold::default();
        h.want();
        assert!(h.rx_interrupt());
        assert_eq!(h.step(), HoldStep::ArmTimer);
        h.want();
        assert!(!h.rx_interrupt(), "joins the hold already running");
        assert!(h.held() && !h.uncovered());
        assert_eq!(h.step(), HoldStep::Wait);
    }
}
