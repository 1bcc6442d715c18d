//! The net_device fuzz target's driver side: descriptors, chains (well-formed, fuzzed, control
//! commands) and what the device can see of each, made available in the rings.
use virtio_bindings::virtio_net::*;
use vm_memory::{Bytes, GuestAddress};

use super::*;

pub(crate) fn desc_bytes(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&addr.to_le_bytes());
    b[8..12].copy_from_slice(&len.to_le_bytes());
    b[12..14].copy_from_slice(&flags.to_le_bytes());
    b[14..].copy_from_slice(&next.to_le_bytes());
    b
}

/// `total` bytes from `addr` in `pieces` descriptors.
pub(crate) fn split(addr: u64, total: u64, pieces: u8, flags: u16) -> Vec<(u64, u32, u16)> {
    let n = u64::from(1 + pieces % 4);
    let each = total / n;
    (0..n)
        .map(|i| {
            let len = if i + 1 == n { total - each * i } else { each };
            (addr + each * i, len as u32, flags)
        })
        .collect()
}

impl Rig {
    pub(crate) fn queue(&self, role: Role) -> Option<usize> {
        self.qs.iter().position(|d| d.role == role && d.ready)
    }

    pub(crate) fn buf(&mut self, len: u64) -> u64 {
        if self.cursor + len > RAM {
            self.cursor = BUF;
        }
        let a = self.cursor;
        self.cursor += len.max(1);
        a
    }

    pub(crate) fn ctrl_buf(&mut self, len: u64) -> u64 {
        if self.ctrl_cursor + len > CTRL_AREA + CTRL_SPAN {
            self.ctrl_cursor = CTRL_AREA;
        }
        let a = self.ctrl_cursor;
        self.ctrl_cursor += len;
        a
    }

    pub(crate) fn alloc(&self, q: usize, n: usize) -> Option<Vec<u16>> {
        let dq = &self.qs[q];
        let v: Vec<u16> = (0..dq.size)
            .filter(|&i| dq.refs[usize::from(i)] == 0)
            .take(n)
            .collect();
        (v.len() == n).then_some(v)
    }

    pub(crate) fn write_desc(
        &self,
        table: u64,
        i: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let at = GuestAddress(table + 16 * u64::from(i));
        self.mem
            .write_slice(&desc_bytes(addr, len, flags, next), at)
            .unwrap();
    }

    pub(crate) fn write_u16(&self, addr: u64, v: u16) {
        self.mem.write_obj(v, GuestAddress(addr)).unwrap();
    }

    /// What the device can see of the chain at `head` now: its writable bytes, following it
    /// the way virtio-queue does (indirect tables included, at most `size` descriptors), and
    /// the descriptor-table slots it goes through.
    pub(crate) fn bound(&self, q: usize, head: u16) -> (u64, Vec<u16>) {
        let dq = &self.qs[q];
        let (mut table, mut qsize, mut idx, mut ttl) = (dq.desc, dq.size, head, dq.size);
        let (mut indirect, mut yielded, mut writable, mut slots) = (false, 0u16, 0u64, Vec::new());
        while yielded < dq.size && ttl > 0 && idx < qsize {
            let mut b = [0u8; 16];
            let Some(at) = table.checked_add(16 * u64::from(idx)) else {
                break;
            };
            if self.mem.read_slice(&mut b, GuestAddress(at)).is_err() {
                break;
            }
            let addr = u64::from_le_bytes(b[..8].try_into().unwrap());
            let len = u32::from_le_bytes(b[8..12].try_into().unwrap());
            let flags = u16::from_le_bytes([b[12], b[13]]);
            let next = u16::from_le_bytes([b[14], b[15]]);
            if !indirect {
                slots.push(idx);
            }
            if flags & INDIRECT != 0 {
                if indirect || len % 16 != 0 || len / 16 > u32::from(u16::MAX) {
                    break;
                }
                (table, qsize, idx, ttl, indirect) =
                    (addr, (len / 16) as u16, 0, (len / 16) as u16, true);
                continue;
            }
            yielded += 1;
            if flags & WRITE != 0 {
                writable += u64::from(len);
            }
            if flags & NEXT != 0 {
                idx = next;
                ttl -= 1;
            } else {
                ttl = 0;
            }
        }
        (writable, slots)
    }

    /// Puts `head` in the next available slot and publishes it.
    pub(crate) fn submit(&mut self, q: usize, head: u16, ack: Option<(u64, Expect, Cmd)>) {
        let size = self.qs[q].size;
        // More than `size` chains in flight (possible only with heads made available twice)
        // would let the device wrap the used ring between two looks: legal for it, but
        // entries the model never sees.
        if self.qs[q].made_available - self.qs[q].used_total >= u64::from(size) {
            return;
        }
        let (writable, slots) = if head < size {
            self.bound(q, head)
        } else {
            (0, Vec::new())
        };
        let dq = &self.qs[q];
        let (avail, shadow) = (dq.avail, dq.shadow);
        self.write_u16(avail + 4 + 2 * u64::from(shadow % size), head);
        self.write_u16(avail + 2, shadow.wrapping_add(1));
        if self.trace {
            eprintln!("  submit q{q} head {head} at avail {shadow}: {writable} writable bytes");
        }
        let dq = &mut self.qs[q];
        dq.shadow = shadow.wrapping_add(1);
        dq.made_available += 1;
        if head < size {
            for &s in &slots {
                dq.refs[usize::from(s)] += 1;
            }
            dq.subs[usize::from(head)].push_back(Sub {
                writable,
                slots,
                ack,
            });
        } else if dq.role == Role::Ctrl {
            self.ctrl_bad_heads += 1;
        }
    }

    /// A chain of `descs` (address, length, flags) in free descriptors, made available.
    pub(crate) fn chain(
        &mut self,
        q: usize,
        descs: &[(u64, u32, u16)],
        ack: Option<(u64, Expect, Cmd)>,
    ) {
        let Some(slots) = self.alloc(q, descs.len()) else {
            return;
        };
        let table = self.qs[q].desc;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let (flags, next) = match slots.get(i + 1) {
                Some(&n) => (flags | NEXT, n),
                None => (flags, 0),
            };
            self.write_desc(table, slots[i], addr, len, flags, next);
        }
        self.submit(q, slots[0], ack);
    }

    /// Where a fuzzed descriptor points. Writable buffers stay among the buffers (or outside
    /// RAM); readable ones may point anywhere.
    pub(crate) fn place(&self, d: &DescSpec) -> (u64, u32, u16) {
        let write = d.kind & 1 != 0;
        let len = if d.kind & 0x40 != 0 {
            d.len
        } else {
            d.len % 0x1_2000
        };
        let a = u64::from(d.addr);
        let addr = match (d.kind >> 2) & 3 {
            1 => RAM - a % 0x100,
            2 if a & 1 != 0 => u64::MAX - (a >> 1) % 0x1000,
            2 => (1 << 32) + a,
            3 if !write => a % RAM,
            _ => BUF + a % (RAM - BUF),
        };
        (addr, len, if write { WRITE } else { 0 })
    }

    pub(crate) fn fuzzed_chain(
        &mut self,
        q: usize,
        n: u8,
        descs: &[DescSpec; 4],
        ind: (u8, u16, &[DescSpec; 4]),
    ) {
        let (ind_n, ind_len, ind) = (usize::from(ind.0 % 5), ind.1, ind.2);
        let n = usize::from(n % 5);
        let total = n + usize::from(ind_n > 0);
        if total == 0 {
            return;
        }
        let Some(slots) = self.alloc(q, total) else {
            return;
        };
        let table = self.qs[q].desc;
        let link = |d: &DescSpec, flags: u16, next: Option<u16>| {
            let (mut flags, mut next) = match next {
                Some(n) => (flags | NEXT, n),
                None => (flags, 0),
            };
            if d.kind & 0x10 != 0 {
                (flags, next) = (flags | NEXT, (d.addr >> 16) as u16);
            }
            if d.kind & 0x20 != 0 {
                flags &= !NEXT;
            }
            (flags, next)
        };
        for i in 0..n {
            let (addr, len, flags) = self.place(&descs[i]);
            let (flags, next) = link(&descs[i], flags, slots.get(i + 1).copied());
            self.write_desc(table, slots[i], addr, len, flags, next);
        }
        if ind_n > 0 {
            let s = slots[n];
            let area = IND + (q as u64 * 256 + u64::from(s)) * IND_SPAN;
            for (i, d) in ind[..ind_n].iter().enumerate() {
                let (addr, len, flags) = self.place(d);
                let next = (i + 1 < ind_n).then_some(i as u16 + 1);
                let (flags, next) = link(d, flags, next);
                self.write_desc(area, i as u16, addr, len, flags, next);
            }
            let tlen = if ind_len & 0x8000 != 0 {
                u32::from(ind_len & 0x1ff).min(IND_SPAN as u32)
            } else {
                16 * ind_n as u32
            };
            let taddr = if ind_len & 0x4000 != 0 { 1 << 33 } else { area };
            let flags = INDIRECT | if ind_len & 0x2000 != 0 { NEXT } else { 0 };
            self.write_desc(table, s, taddr, tlen, flags, 0);
        }
        self.submit(q, slots[0], None);
    }

    /// What a control command should be answered, given the negotiated features.
    pub(crate) fn expect(&self, class: u8, cmd: u8, data: &[u8]) -> (Expect, Cmd) {
        let (class, cmd) = (u32::from(class), u32::from(cmd));
        if (class, cmd) == (VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET)
            && has(self.acked, VIRTIO_NET_F_MQ)
            && data.len() == 2
        {
            let n = u16::from_le_bytes([data[0], data[1]]);
            if n >= 1 && usize::from(n) <= self.used_pairs {
                return (Expect::Ok, Cmd::Pairs(n));
            }
        }
        if (class, cmd)
            == (
                VIRTIO_NET_CTRL_GUEST_OFFLOADS,
                VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET,
            )
            && has(self.acked, VIRTIO_NET_F_CTRL_GUEST_OFFLOADS)
            && data.len() == 8
        {
            let bits = u64::from_le_bytes(data.try_into().unwrap());
            if bits & !(self.acked & GUEST_OFFLOADS) == 0 {
                return (Expect::Ok, Cmd::Offloads(bits));
            }
        }
        (Expect::Err, Cmd::Other)
    }

    /// A control command in one of eight chain shapes; 0, 1 and 5 are well-formed.
    pub(crate) fn ctrl(&mut self, class: u8, cmd: u8, data: &[u8], shape: u8) {
        let Some(q) = self.queue(Role::Ctrl) else {
            return;
        };
        let (expect, what) = self.expect(class, cmd, data);
        let mut bytes = vec![class, cmd];
        bytes.extend_from_slice(data);
        let n = bytes.len() as u32;
        let c = self.ctrl_buf(u64::from(n));
        self.mem.write_slice(&bytes, GuestAddress(c)).unwrap();
        let a = self.ctrl_buf(8);
        self.mem.write_obj(0xeeu8, GuestAddress(a)).unwrap();
        let (r, w) = (0, WRITE);
        let descs: Vec<(u64, u32, u16)> = match shape % 8 {
            0 => vec![(c, n, r), (a, 1, w)],
            1 if n > 2 => vec![(c, 2, r), (c + 2, n - 2, r), (a, 1, w)],
            1 => vec![(c, 2, r), (a, 1, w)],
            2 => vec![(c, n, r), (a, 0, w)],
            3 => vec![(c, n, r)],
            4 => vec![(a, 1, w), (c, n, r)],
            5 => vec![(c, n, r), (a, 1, w), (a + 1, 7, w)],
            6 => vec![(c, n + 5000, r), (a, 1, w)],
            _ => vec![(c, 1, r), (a, 1, w)],
        };
        let expect = if matches!(shape % 8, 0 | 1 | 5) {
            expect
        } else {
            Expect::Nothing
        };
        self.chain(q, &descs, Some((a, expect, what)));
    }
}
