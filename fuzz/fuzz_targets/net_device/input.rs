//! The `net_device` fuzz target's input: the device's shape and the driver's and backends'
//! operations, as `arbitrary` makes them from the fuzzer's bytes.
use arbitrary::Arbitrary;
use trapvisor::net::header::HDR_LEN;

use super::MAX_QUEUES;

#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct DescSpec {
    pub addr: u32,
    pub len: u32,
    /// bit 0 write; bits 2-3 address: buffers, across RAM's end, far outside, anywhere (reads);
    /// bit 4 `next` from `addr`'s top half; bit 5 chain ends here; bit 6 raw length.
    pub kind: u8,
}

#[derive(Arbitrary, Debug)]
pub enum Op {
    RxBuffers {
        pair: u8,
        count: u8,
        len: u32,
        pieces: u8,
    },
    TxFrame {
        pair: u8,
        hdr: [u8; HDR_LEN],
        len: u32,
        pieces: u8,
    },
    /// Up to 4 descriptors, then an indirect one to up to 4 more (`ind_len`: bit 15 raw
    /// table length, bit 14 table outside RAM).
    Chain {
        queue: u8,
        n: u8,
        descs: [DescSpec; 4],
        ind_n: u8,
        ind_len: u16,
        ind: [DescSpec; 4],
    },
    Ctrl {
        class: u8,
        cmd: u8,
        data_len: u8,
        data: [u8; 8],
        shape: u8,
    },
    PairsSet {
        pairs: u16,
    },
    OffloadsSet {
        offloads: u64,
    },
    Frames {
        pair: u8,
        count: u8,
        len: u32,
        fill: u8,
    },
    Kick {
        queue: u8,
    },
    Ready {
        pair: u8,
        events: u8,
    },
    /// 1..=size stale available entries become available again.
    AvailJump {
        queue: u8,
        delta: u16,
    },
    /// An available index more than the queue size ahead, a kick, and the index put back.
    AvailGlitch {
        queue: u8,
        delta: u16,
    },
    Head {
        queue: u8,
        head: u16,
    },
    Suppress {
        queue: u8,
        no_interrupt: bool,
        used_event: u16,
    },
    Poke {
        offset: u32,
        value: u64,
    },
    Backend {
        pair: u8,
        tx_again: u8,
        tx_error: u8,
        rx_error: u8,
    },
    Reset {
        features: u64,
    },
    ReadConfig {
        offset: u8,
        len: u8,
    },
    /// What a pair's worker does after a batch of events (`txhold`: look once more, decide
    /// or hold a transmit interrupt).
    WorkerIdle {
        pair: u8,
    },
    /// A pair's `txhold` timer expires.
    HoldExpired {
        pair: u8,
    },
}

#[derive(Arbitrary, Debug)]
pub struct Input {
    pub pairs: u8,
    pub offload: bool,
    pub fail_config: bool,
    pub irq_fail: bool,
    pub features: u64,
    pub sizes: [u8; MAX_QUEUES],
    pub not_ready: u8,
    pub ops: Vec<Op>,
}
