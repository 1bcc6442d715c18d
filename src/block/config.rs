//! `--disk path=IMG[,readonly=on][,direct=on][,queues=N][,serial=STR][,engine=uring|pool]
//! [,notify=ioeventfd|exit][,irq=irqfd|msi]`.
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::virtio::DeviceOptions;

/// The most request queues one disk offers (a worker thread each).
pub const MAX_QUEUES: u16 = 16;
/// Bytes of a GET_ID answer (VIRTIO_BLK_ID_BYTES).
pub const SERIAL_LEN: usize = 20;

/// How requests reach the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineKind {
    /// io_uring, falling back to the thread pool when the kernel refuses it.
    #[default]
    Auto,
    /// io_uring only (fails to start without it).
    Uring,
    /// The thread pool (blocking preadv/pwritev on helper threads).
    Pool,
}

/// One disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub readonly: bool,
    /// O_DIRECT: no host page cache.
    pub direct: bool,
    /// Request queues (a worker thread each).
    pub queues: u16,
    /// What GET_ID answers (at most 20 bytes; default: from the image's name).
    pub serial: Option<String>,
    pub engine: EngineKind,
    pub transport: DeviceOptions,
}

impl DiskConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        DiskConfig {
            path: path.into(),
            readonly: false,
            direct: false,
            queues: 1,
            serial: None,
            engine: EngineKind::Auto,
            transport: DeviceOptions::default(),
        }
    }

    /// The 20 bytes GET_ID returns: the serial, zero-padded (default: the file name's last 20
    /// bytes, as a user would recognise it).
    pub fn serial_bytes(&self) -> [u8; SERIAL_LEN] {
        let mut id = [0u8; SERIAL_LEN];
        let name = match &self.serial {
            Some(s) => s.clone(),
            None => self
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        let b = name.as_bytes();
        let b = &b[b.len().saturating_sub(SERIAL_LEN)..];
        id[..b.len()].copy_from_slice(b);
        id
    }

    /// "ro" or "rw", with ",direct" for O_DIRECT.
    pub fn mode(&self) -> String {
        format!(
            "{}{}",
            if self.readonly { "ro" } else { "rw" },
            if self.direct { ",direct" } else { "" }
        )
    }
}

const OPTIONS: &str = "path=IMG, readonly=, direct=, queues=, serial=, engine=, notify=, irq=";

fn on_off(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{key}={value}: use on or off")),
    }
}

impl FromStr for DiskConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut path = None;
        let mut cfg = DiskConfig::new("");
        let mut transport = Vec::new();
        let mut seen: Vec<&str> = Vec::new();
        for item in s.split(',').filter(|i| !i.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| format!("'{item}' is not key=value ({OPTIONS})"))?;
            if seen.contains(&key) {
                return Err(format!("{key}= given twice"));
            }
            seen.push(key);
            match key {
                "path" => {
                    if value.is_empty() {
                        return Err("path= is empty".into());
                    }
                    path = Some(PathBuf::from(value));
                }
                "readonly" => cfg.readonly = on_off(key, value)?,
                "direct" => cfg.direct = on_off(key, value)?,
                "queues" => {
                    cfg.queues = value
                        .parse()
                        .ok()
                        .filter(|q| (1..=MAX_QUEUES).contains(q))
                        .ok_or_else(|| {
                            format!("queues={value}: use a number of queues from 1 to {MAX_QUEUES}")
                        })?;
                }
                "serial" => {
                    if value.len() > SERIAL_LEN || !value.bytes().all(|b| b.is_ascii_graphic()) {
                        return Err(format!(
                            "serial={value}: use at most {SERIAL_LEN} printable ASCII characters"
                        ));
                    }
                    cfg.serial = Some(value.to_string());
                }
                "engine" => {
                    cfg.engine = match value {
                        "uring" => EngineKind::Uring,
                        "pool" => EngineKind::Pool,
                        _ => return Err(format!("engine={value}: use uring or pool")),
                    }
                }
                "notify" | "irq" => transport.push(item),
                _ => return Err(format!("unknown option '{key}' ({OPTIONS})")),
            }
        }
        cfg.path = path.ok_or_else(|| format!("path= is missing ({OPTIONS})"))?;
        cfg.transport = DeviceOptions::parse(&transport.join(","))?;
        Ok(cfg)
    }
}

impl fmt::Display for DiskConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "path={}", self.path.display())?;
        if self.readonly {
            f.write_str(",readonly=on")?;
        }
        if self.direct {
            f.write_str(",direct=on")?;
        }
        if self.queues != 1 {
            write!(f, ",queues={}", self.queues)?;
        }
        if let Some(s) = &self.serial {
            write!(f, ",serial={s}")?;
        }
        match self.engine {
            EngineKind::Auto => {}
            EngineKind::Uring => f.write_str(",engine=uring")?,
            EngineKind::Pool => f.write_str(",engine=pool")?,
        }
        if self.transport != DeviceOptions::default() {
            write!(f, ",{}", self.transport)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::NotifyMode;

    #[test]
    fn options_parse() {
        let c: DiskConfig = "path=/img".parse().unwrap();
        assert_eq!(c, DiskConfig::new("/img"));
        let c: DiskConfig =
            "path=/a/root.ext4,readonly=on,direct=on,queues=4,serial=abc,engine=pool,notify=exit"
                .parse()
                .unwrap();
        assert!(c.readonly && c.direct);
        assert_eq!((c.queues, c.engine), (4, EngineKind::Pool));
        assert_eq!(c.transport.notify, NotifyMode::Exit);
        assert_eq!(&c.serial_bytes()[..4], b"abc\0");
        assert_eq!(c.mode(), "ro,direct");
        let again: DiskConfig = c.to_string().parse().unwrap();
        assert_eq!(again, c);
        // The default serial: the file name.
        let c: DiskConfig = "path=/x/rootfs.ext4".parse().unwrap();
        assert_eq!(&c.serial_bytes()[..12], b"rootfs.ext4\0");
    }

    #[test]
    fn bad_options_are_refused() {
        for bad in [
            "",
            "readonly=on",
            "path=",
            "path=/a,path=/b",
            "path=/a,readonly=yes",
            "path=/a,direct=1",
            "path=/a,queues=0",
            "path=/a,queues=17",
            "path=/a,queues=x",
            "path=/a,serial=012345678901234567890",
            "path=/a,serial=a b",
            "path=/a,engine=aio",
            "path=/a,notify=fast",
            "path=/a,bogus=1",
            "path=/a,novalue",
        ] {
            assert!(bad.parse::<DiskConfig>().is_err(), "{bad} parsed");
        }
    }
}
