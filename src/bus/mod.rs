//! Address spaces: one PIO bus and one MMIO bus.
//!
//! A device registers a range; dispatch finds the range that owns an address and calls the
//! device with the offset inside the range and the access width (`data.len()`). An access that
//! nobody owns reads as all-ones and its writes are dropped; it is counted per address and logged
//! once, never fatal.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// What a device asks the VMM to do after a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceEvent {
    /// Nothing beyond the write itself.
    None,
    /// The guest asked for a reset (i8042 0xFE, ACPI reset).
    Reset,
    /// The guest powered off (ACPI S5).
    Poweroff,
    /// The guest reported a test result through the debug-exit port: 0 is pass.
    DebugExit(u32),
    /// The guest kernel panicked (pvpanic `PANICKED`).
    GuestPanic,
}

/// A device on a bus: a plain state machine driven by reads and writes.
pub trait BusDevice: Send {
    /// Reads `data.len()` bytes at `offset` inside the registered range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset` inside the registered range.
    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceEvent;
    /// The name of the register or region at `offset`, for maps and statistics.
    fn region_name(&self, _offset: u64) -> &'static str {
        ""
    }
}

/// A shared handle to a device; the same device may sit on several ranges.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Which address space a bus serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BusKind {
    Pio,
    Mmio,
}

impl fmt::Display for BusKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BusKind::Pio => "pio",
            BusKind::Mmio => "mmio",
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("{kind} range {base:#x}+{len:#x} ({name}) overlaps {other} at {other_base:#x}+{other_len:#x}")]
    Overlap {
        kind: BusKind,
        base: u64,
        len: u64,
        name: String,
        other: String,
        other_base: u64,
        other_len: u64,
    },
    #[error("{kind} range {base:#x}+{len:#x} ({name}) is empty or wraps the address space")]
    BadRange {
        kind: BusKind,
        base: u64,
        len: u64,
        name: String,
    },
    #[error("no {kind} range is registered at {base:#x}")]
    NotRegistered { kind: BusKind, base: u64 },
}

/// One registered range.
#[derive(Clone)]
struct Entry {
    /// Stable id of the registration (an index into `Bus::names`), for statistics.
    id: u32,
    len: u64,
    name: String,
    region: String,
    device: SharedDevice,
}

/// One row of the address-space map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    pub base: u64,
    pub len: u64,
    pub device: String,
    pub region: String,
}

/// Who handled an access: the registration's id (see `Bus::device_name`) and the register or
/// region the device names for the offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Hit {
    pub id: u32,
    pub region: &'static str,
}

/// A vCPU's memory of the range its last access on a bus hit, so that a run of accesses to one
/// device (a guest's exit loop, a driver polling a register) skips the range lookup: the read
/// lock, the tree walk and the device handle's reference count. It is valid while the bus's
/// generation (bumped by every insert and remove) is unchanged.
#[derive(Default)]
pub struct LookupCache {
    hit: Option<CachedRange>,
}

struct CachedRange {
    generation: u64,
    base: u64,
    len: u64,
    id: u32,
    device: SharedDevice,
}

/// An address space.
pub struct Bus {
    kind: BusKind,
    ranges: RwLock<BTreeMap<u64, Entry>>,
    /// Bumped by every change of `ranges` (see [`LookupCache`]).
    generation: AtomicU64,
    /// Device name per registration id; ids are never reused, so statistics keyed by id stay
    /// meaningful after a range moves or goes away.
    names: RwLock<Vec<String>>,
    unowned: Mutex<HashMap<u64, u64>>,
}

impl Bus {
    pub fn new(kind: BusKind) -> Self {
        Bus {
            kind,
            ranges: RwLock::new(BTreeMap::new()),
            generation: AtomicU64::new(0),
            names: RwLock::new(Vec::new()),
            unowned: Mutex::new(HashMap::new()),
        }
    }

    pub fn kind(&self) -> BusKind {
        self.kind
    }

    /// Registers `device` at `[base, base + len)`. Overlap with another range is an error.
    pub fn insert(
        &self,
        base: u64,
        len: u64,
        name: &str,
        region: &str,
        device: SharedDevice,
    ) -> Result<(), BusError> {
        if len == 0 || base.checked_add(len - 1).is_none() {
            return Err(BusError::BadRange {
                kind: self.kind,
                base,
                len,
                name: name.to_string(),
            });
        }
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        let end = base + (len - 1);
        // The range that starts at or below `end` with the highest base is the only candidate
        // besides ranges that start inside [base, end].
        if let Some((&obase, other)) = ranges.range(..=end).next_back() {
            if obase + (other.len - 1) >= base {
                return Err(BusError::Overlap {
                    kind: self.kind,
                    base,
                    len,
                    name: name.to_string(),
                    other: other.name.clone(),
                    other_base: obase,
                    other_len: other.len,
                });
            }
        }
        let id = {
            let mut names = self.names.write().unwrap_or_else(|e| e.into_inner());
            names.push(name.to_string());
            (names.len() - 1) as u32
        };
        ranges.insert(
            base,
            Entry {
                id,
                len,
                name: name.to_string(),
                region: region.to_string(),
                device,
            },
        );
        self.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Removes the range registered at exactly `base`.
    pub fn remove(&self, base: u64) -> Result<(), BusError> {
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        let removed = ranges.remove(&base);
        self.generation.fetch_add(1, Ordering::Release);
        removed.map(|_| ()).ok_or(BusError::NotRegistered {
            kind: self.kind,
            base,
        })
    }

    /// Dispatches a read. Returns who handled it, or `None` for an unowned address (which
    /// reads as all-ones).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> Option<Hit> {
        self.read_cached(&mut LookupCache::default(), addr, data)
    }

    /// Dispatches a write. Unowned writes are dropped and yield `DeviceEvent::None`.
    pub fn write(&self, addr: u64, data: &[u8]) -> (Option<Hit>, DeviceEvent) {
        self.write_cached(&mut LookupCache::default(), addr, data)
    }

    /// As `read`, trying the range in `cache` first (a vCPU keeps one per bus).
    pub fn read_cached(&self, cache: &mut LookupCache, addr: u64, data: &mut [u8]) -> Option<Hit> {
        match self.lookup_cached(cache, addr, data.len()) {
            Some((id, offset, device)) => {
                let mut d = lock(device);
                d.read(offset, data);
                Some(Hit {
                    id,
                    region: d.region_name(offset),
                })
            }
            None => {
                data.fill(0xff);
                self.count_unowned(addr, false, data.len());
                None
            }
        }
    }

    /// As `write`, trying the range in `cache` first.
    pub fn write_cached(
        &self,
        cache: &mut LookupCache,
        addr: u64,
        data: &[u8],
    ) -> (Option<Hit>, DeviceEvent) {
        match self.lookup_cached(cache, addr, data.len()) {
            Some((id, offset, device)) => {
                let mut d = lock(device);
                let event = d.write(offset, data);
                let hit = Hit {
                    id,
                    region: d.region_name(offset),
                };
                (Some(hit), event)
            }
            None => {
                self.count_unowned(addr, true, data.len());
                (None, DeviceEvent::None)
            }
        }
    }

    /// Who owns `addr` and the region its device names there, without an access (the device
    /// is locked only to ask for the name); `None` when nobody owns it.
    pub fn hit_at(&self, addr: u64) -> Option<Hit> {
        let mut cache = LookupCache::default();
        let (id, offset, device) = self.lookup_cached(&mut cache, addr, 1)?;
        let region = lock(device).region_name(offset);
        Some(Hit { id, region })
    }

    /// The device name a registration id stands for.
    pub fn device_name(&self, id: u32) -> String {
        let names = self.names.read().unwrap_or_else(|e| e.into_inner());
        names.get(id as usize).cloned().unwrap_or_default()
    }

    /// Finds the device owning `addr` for an access of `len` bytes, from `cache` when it is
    /// current and covers the access, else from the ranges (and remembers it in `cache`). An
    /// access that straddles the end of a range is not owned.
    fn lookup_cached<'c>(
        &self,
        cache: &'c mut LookupCache,
        addr: u64,
        len: usize,
    ) -> Option<(u32, u64, &'c SharedDevice)> {
        let span = (len as u64).max(1) - 1;
        let generation = self.generation.load(Ordering::Acquire);
        let fresh = cache.hit.as_ref().is_some_and(|c| {
            c.generation == generation
                && addr >= c.base
                && (addr - c.base).checked_add(span).is_some_and(|l| l < c.len)
        });
        if !fresh {
            let ranges = self.ranges.read().unwrap_or_else(|e| e.into_inner());
            let (&base, entry) = ranges.range(..=addr).next_back()?;
            let last = (addr - base).checked_add(span)?;
            if last >= entry.len {
                return None;
            }
            cache.hit = Some(CachedRange {
                generation,
                base,
                len: entry.len,
                id: entry.id,
                device: entry.device.clone(),
            });
        }
        let c = cache.hit.as_ref()?;
        Some((c.id, addr - c.base, &c.device))
    }

    fn count_unowned(&self, addr: u64, write: bool, len: usize) {
        let mut unowned = self.unowned.lock().unwrap_or_else(|e| e.into_inner());
        let count = unowned.entry(addr).or_insert(0);
        *count += 1;
        if *count == 1 {
            log::warn!(
                "unowned {} {} at {:#x} ({} bytes): {}",
                self.kind,
                if write { "write" } else { "read" },
                addr,
                len,
                if write {
                    "dropped"
                } else {
                    "reads as all-ones"
                }
            );
        }
    }

    /// Accesses nobody owned, per address, sorted by address.
    pub fn unowned_counts(&self) -> Vec<(u64, u64)> {
        let unowned = self.unowned.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = unowned.iter().map(|(&a, &c)| (a, c)).collect();
        v.sort_unstable();
        v
    }

    /// Every registered range, sorted by address.
    pub fn map(&self) -> Vec<MapEntry> {
        let ranges = self.ranges.read().unwrap_or_else(|e| e.into_inner());
        ranges
            .iter()
            .map(|(&base, e)| MapEntry {
                base,
                len: e.len,
                device: e.name.clone(),
                region: e.region.clone(),
            })
            .collect()
    }
}

/// Locks a device, carrying on past a poisoned lock: a device's state is plain data.
pub fn lock(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device.lock().unwrap_or_else(|e| e.into_inner())
}

/// Formats both address spaces the way `--print-map` shows them.
pub fn format_map(buses: &[&Bus]) -> String {
    let mut out = String::new();
    for bus in buses {
        let width = if bus.kind == BusKind::Pio { 4 } else { 16 };
        out.push_str(&format!("address-space: {}\n", bus.kind));
        for e in bus.map() {
            out.push_str(&format!(
                "  {:0w$x}-{:0w$x} (size {:#x}) {}{}{}\n",
                e.base,
                e.base + (e.len - 1),
                e.len,
                e.device,
                if e.region.is_empty() { "" } else { " " },
                e.region,
                w = width
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests;
