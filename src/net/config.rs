//! `--net tap=NAME[,mac=MAC][,queues=N][,notify=ioeventfd|exit][,irq=irqfd|msi][,offload=on|off]
//! [,vhost=on|off][,txhold=US]`.
use std::fmt;
use std::str::FromStr;

use super::tap::{mac_from_name, validate_name};
use crate::virtio::{DeviceOptions, IrqMode, NotifyMode};

/// The most queue pairs one virtio-net device offers (a worker thread each).
pub const MAX_PAIRS: u16 = 64;

/// `txhold`'s default and largest value, in microseconds.
pub const TXHOLD_DEFAULT_US: u32 = 300;
pub const TXHOLD_MAX_US: u32 = 10_000;

/// One NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The TAP to attach to (created, not persistent, when it does not exist).
    pub tap: String,
    /// The guest's MAC; `None`: [`mac_from_name`] of the TAP name.
    pub mac: Option<[u8; 6]>,
    /// Queue pairs (one TAP queue and one worker thread each).
    pub queues: u16,
    /// Offer checksum and segmentation offloads (`offload=off` withdraws them).
    pub offload: bool,
    /// `vhost=on`: the kernel's vhost-net moves the frames of every queue pair (the control
    /// queue stays here); needs `/dev/vhost-net`, notify=ioeventfd and irq=irqfd.
    pub vhost: bool,
    /// `txhold=US`: how long the worker may hold a transmit interrupt behind a receive
    /// interrupt (the driver's receive handler usually takes the completion along); 0: never.
    pub txhold_us: u32,
    pub transport: DeviceOptions,
}

impl NetConfig {
    /// TAP `tap` with the defaults: derived MAC, one queue pair, offloads on.
    pub fn new(tap: &str) -> Self {
        NetConfig {
            tap: tap.to_string(),
            mac: None,
            queues: 1,
            offload: true,
            vhost: false,
            txhold_us: TXHOLD_DEFAULT_US,
            transport: DeviceOptions::default(),
        }
    }

    /// The MAC the guest gets.
    pub fn mac(&self) -> [u8; 6] {
        self.mac.unwrap_or_else(|| mac_from_name(&self.tap))
    }
}

/// `52:54:00:12:34:56` (or with `-`): a unicast, non-zero address.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bad = || format!("mac={s}: use six hex bytes like 52:54:00:12:34:56");
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(&parts) {
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if mac[0] & 1 != 0 {
        return Err(format!("mac={s} is a multicast address"));
    }
    if mac == [0; 6] {
        return Err(format!("mac={s} is all zeros"));
    }
    Ok(mac)
}

/// `52:54:00:12:34:56`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl FromStr for NetConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut tap = None;
        let mut cfg = NetConfig::new("");
        let mut transport = Vec::new();
        let mut seen: Vec<&str> = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, value) = item.split_once('=').ok_or_else(|| {
                format!(
                    "'{item}' is not key=value (tap=NAME, mac=, queues=, notify=, irq=, offload=, vhost=, txhold=)"
                )
            })?;
            if seen.contains(&key) {
                return Err(format!("{key}= given twice"));
            }
            seen.push(key);
            match key {
                "tap" => {
                    validate_name(value).map_err(|e| e.to_string())?;
                    tap = Some(value.to_string());
                }
                "mac" => cfg.mac = Some(parse_mac(value)?),
                "queues" => {
                    cfg.queues = value
                        .parse()
                        .ok()
                        .filter(|q| (1..=MAX_PAIRS).contains(q))
                        .ok_or_else(|| {
                            format!(
                                "queues={value}: use a number of queue pairs from 1 to {MAX_PAIRS}"
                            )
                        })?;
                }
                "offload" => {
                    cfg.offload = match value {
                        "on" => true,
                        "off" => false,
                        _ => return Err(format!("offload={value}: use on or off")),
                    }
                }
                "vhost" => {
                    cfg.vhost = match value {
                        "on" => true,
                        "off" => false,
                        _ => return Err(format!("vhost={value}: use on or off")),
                    }
                }
                "txhold" => {
                    cfg.txhold_us = value
                        .parse()
                        .ok()
                        .filter(|us| *us <= TXHOLD_MAX_US)
                        .ok_or_else(|| {
                            format!("txhold={value}: use microseconds from 0 (off) to {TXHOLD_MAX_US}")
                        })?;
                }
                "notify" | "irq" => transport.push(item),
                _ => {
                    return Err(format!(
                        "unknown option '{key}' (tap=NAME, mac=, queues=, notify=, irq=, offload=, vhost=, txhold=)"
                    ))
                }
            }
        }
        cfg.tap = tap.ok_or("tap=NAME is required (the TAP device to attach to)")?;
        cfg.transport = DeviceOptions::parse(&transport.join(","))?;
        if cfg.vhost && cfg.transport.notify != NotifyMode::Ioeventfd {
            return Err(
                "vhost=on needs notify=ioeventfd (vhost-net waits on the kick eventfds)".into(),
            );
        }
        if cfg.vhost && cfg.transport.irq != IrqMode::Irqfd {
            return Err("vhost=on needs irq=irqfd (vhost-net signals the vectors' irqfds)".into());
        }
        Ok(cfg)
    }
}

impl fmt::Display for NetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tap={},mac={},queues={},offload={},{}",
            self.tap,
            format_mac(&self.mac()),
            self.queues,
            if self.offload { "on" } else { "off" },
            if self.vhost { "vhost=on," } else { "" },
        )?;
        if self.txhold_us != TXHOLD_DEFAULT_US {
            write!(f, "txhold={},", self.txhold_us)?;
        }
        write!(f, "{}", self.transport)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_every_option() {
        let c: NetConfig = "tap=tv0".parse().unwrap();
        assert_eq!(c, NetConfig::new("tv0"));
        assert_eq!(c.mac(), mac_from_name("tv0"));
        let c: NetConfig = "tap=tv1,mac=52:54:00:12:34:56,queues=4,notify=exit,irq=msi,offload=off"
            .parse()
            .unwrap();
        assert_eq!(c.tap, "tv1");
        assert_eq!(c.mac(), [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert_eq!(c.queues, 4);
        assert!(!c.offload);
        assert_eq!(c.transport.notify, NotifyMode::Exit);
        assert_eq!(c.transport.irq, IrqMode::Msi);
        // Display round-trips.
        assert_eq!(c.to_string().parse::<NetConfig>().unwrap(), c);
        let c: NetConfig = "tap=tv2,vhost=on,queues=2,mac=52:54:00:12:34:57"
            .parse()
            .unwrap();
        assert!(c.vhost);
        assert_eq!(c.to_string().parse::<NetConfig>().unwrap(), c);
        let c: NetConfig = "tap=tv3,txhold=0".parse().unwrap();
        assert_eq!(c.txhold_us, 0);
        assert!(c.to_string().contains(",txhold=0,"), "{c}");
        assert_eq!(c.to_string().parse::<NetConfig>().unwrap().txhold_us, 0);
        assert!(!NetConfig::new("x").to_string().contains("txhold"));
        let c: NetConfig = "tap=tv3,txhold=10000".parse().unwrap();
        assert_eq!(c.txhold_us, TXHOLD_MAX_US);
        assert_eq!(NetConfig::new("x").txhold_us, TXHOLD_DEFAULT_US);
        let c: NetConfig = "irq=msi, tap=x".parse().unwrap();
        assert_eq!(
            (c.tap.as_str(), c.transport.notify),
            ("x", NotifyMode::Ioeventfd)
        );
    }

    #[test]
    fn bad_values_give_one_line_errors() {
        for (bad, needle) in [
            ("", "tap=NAME is required"),
            ("mac=52:54:00:12:34:56", "tap=NAME is required"),
            ("tap=", "empty"),
            ("tap=tv0123456789abcd", "IFNAMSIZ"),
            ("tap=a/b", "'/'"),
            ("tap=tv0,tap=tv1", "twice"),
            ("tap=tv0,mac=52:54:00:12:34", "six hex bytes"),
            ("tap=tv0,mac=52:54:00:12:34:zz", "six hex bytes"),
            ("tap=tv0,mac=53:54:00:12:34:56", "multicast"),
            ("tap=tv0,mac=00:00:00:00:00:00", "all zeros"),
            ("tap=tv0,queues=0", "queue pairs"),
            ("tap=tv0,queues=65", "queue pairs"),
            ("tap=tv0,queues=two", "queue pairs"),
            ("tap=tv0,notify=fast", "notify=fast"),
            ("tap=tv0,irq=intx", "irq=intx"),
            ("tap=tv0,offload=maybe", "on or off"),
            ("tap=tv0,vhost=yes", "on or off"),
            ("tap=tv0,vhost=on,notify=exit", "notify=ioeventfd"),
            ("tap=tv0,vhost=on,irq=msi", "irq=irqfd"),
            ("tap=tv0,speed=10G", "unknown option"),
            ("tap=tv0,txhold=10001", "0 (off) to 10000"),
            ("tap=tv0,txhold=-1", "0 (off) to 10000"),
            ("tap=tv0,txhold=1ms", "0 (off) to 10000"),
            ("tap=tv0,queues", "not key=value"),
        ] {
            let err = bad.parse::<NetConfig>().unwrap_err();
            assert!(err.contains(needle), "{bad:?}: {err}");
            assert!(!err.contains('\n'), "{bad:?}: {err}");
        }
    }

    #[test]
    fn macs() {
        assert_eq!(parse_mac("02-00-00-00-00-01"), Ok([2, 0, 0, 0, 0, 1]));
        assert_eq!(
            format_mac(&[0x52, 0x54, 0, 0xab, 0xcd, 0xef]),
            "52:54:00:ab:cd:ef"
        );
        assert!(parse_mac("2:0:0:0:0:1").is_err());
    }
}
