//! A read-only flattened device tree (devicetree specification v0.4, chapter 5): the blob the
//! VMM passes in X0. Every read is bounds-checked: a malformed blob gives `None` or an error,
//! never a read outside it.
//!
//! Nodes are visited in order ([`Fdt::nodes`]); each carries the `#address-cells` and
//! `#size-cells` its parent gives it, so `reg` decodes without a second walk.

const MAGIC: u32 = 0xd00d_feed;
const BEGIN_NODE: u32 = 1;
const END_NODE: u32 = 2;
const PROP: u32 = 3;
const NOP: u32 = 4;
// 9 (FDT_END) and anything else end the walk.
/// Deepest nesting followed (the trees VMMs generate are 3–4 deep).
const MAX_DEPTH: usize = 16;

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// Reads a big-endian number of `cells` 32-bit cells (1 or 2) from the front of `b`.
fn cells(b: &[u8], cells: u32) -> Option<(u64, &[u8])> {
    match cells {
        0 => Some((0, b)),
        1 => Some((u64::from(be32(b, 0)?), &b[4..])),
        2 => Some((
            (u64::from(be32(b, 0)?) << 32) | u64::from(be32(b, 4)?),
            &b[8..],
        )),
        _ => None,
    }
}

/// `at + fixed + len` rounded up to 4, or None on overflow.
fn next_token(at: usize, fixed: usize, len: usize) -> Option<usize> {
    Some(at.checked_add(fixed)?.checked_add(len)?.checked_add(3)? & !3)
}

/// A NUL-terminated string at the front of `b` (without the NUL).
fn cstr(b: &[u8]) -> Option<&str> {
    let end = b.iter().position(|&c| c == 0)?;
    core::str::from_utf8(&b[..end]).ok()
}

/// The blob.
#[derive(Clone, Copy)]
pub struct Fdt<'a> {
    structs: &'a [u8],
    strings: &'a [u8],
    /// `totalsize` from the header.
    pub size: usize,
}

/// One node.
#[derive(Clone, Copy)]
pub struct Node<'a> {
    fdt: Fdt<'a>,
    /// The unit name (`uart@9000000`); "" for the root.
    pub name: &'a str,
    /// 0 for the root.
    pub depth: usize,
    /// Offset of the node's first token after its name, in the structure block.
    props_at: usize,
    /// `#address-cells` and `#size-cells` of the parent (what `reg` is read with).
    pub parent_cells: (u32, u32),
}

impl<'a> Fdt<'a> {
    /// Checks the header of the blob at `addr` and borrows it.
    ///
    /// # Safety
    /// `addr` must be readable for the `totalsize` its header states, and stay unchanged.
    pub unsafe fn from_addr(addr: u64) -> Result<Fdt<'static>, &'static str> {
        if addr == 0 || !addr.is_multiple_of(8) {
            return Err("the FDT address in X0 is 0 or not 8-byte aligned");
        }
        // SAFETY: the caller guarantees the header (40 bytes) is readable.
        let header = unsafe { core::slice::from_raw_parts(addr as *const u8, 40) };
        if be32(header, 0) != Some(MAGIC) {
            return Err("no FDT magic at the address in X0");
        }
        let total = be32(header, 4).unwrap_or(0) as usize;
        if !(40..=(2 << 20)).contains(&total) {
            return Err("FDT totalsize below 40 bytes or above 2 MiB");
        }
        // SAFETY: the caller guarantees `totalsize` bytes are readable.
        let blob = unsafe { core::slice::from_raw_parts(addr as *const u8, total) };
        Fdt::new(blob)
    }

    /// Checks the header of `blob` (version 16 or later) and finds its blocks.
    pub fn new(blob: &'a [u8]) -> Result<Fdt<'a>, &'static str> {
        let field = |i: usize| be32(blob, 4 * i).ok_or("FDT shorter than its header");
        if field(0)? != MAGIC {
            return Err("no FDT magic");
        }
        let total = field(1)? as usize;
        let (off_struct, off_strings) = (field(2)? as usize, field(3)? as usize);
        let version = field(5)?;
        let (size_strings, size_struct) = (field(8)? as usize, field(9)? as usize);
        if total > blob.len() || version < 16 {
            return Err("FDT truncated or older than version 16");
        }
        let block = |at: usize, len: usize| {
            at.checked_add(len)
                .and_then(|end| blob.get(at..end))
                .ok_or("FDT block outside the blob")
        };
        Ok(Fdt {
            structs: block(off_struct, size_struct)?,
            strings: block(off_strings, size_strings)?,
            size: total,
        })
    }

    fn token(&self, at: usize) -> Option<u32> {
        be32(self.structs, at)
    }

    /// Every node in document order.
    pub fn nodes(&self) -> Nodes<'a> {
        Nodes {
            fdt: *self,
            at: 0,
            depth: 0,
            cells: [(2, 1); MAX_DEPTH + 1],
            done: false,
        }
    }

    /// The first node compatible with `compat`.
    pub fn find_compatible(&self, compat: &str) -> Option<Node<'a>> {
        self.nodes().find(|n| n.is_compatible(compat))
    }

    /// The node at `path` (`/`, `/chosen`, `/pcie@10000000`); unit addresses must be given
    /// when the node has one, except that `/name` also matches `name@...` if it is unique.
    pub fn find_path(&self, path: &str) -> Option<Node<'a>> {
        let path = path.strip_prefix('/')?;
        let mut want = path.split('/').filter(|s| !s.is_empty());
        let mut part = want.next();
        let mut depth = 0;
        for node in self.nodes() {
            let p = part?;
            if node.depth == 0 {
                if path.is_empty() {
                    return Some(node);
                }
                continue;
            }
            if node.depth <= depth {
                return None; // left the subtree that matched so far
            }
            if node.depth == depth + 1 && node_name_matches(node.name, p) {
                depth += 1;
                part = want.next();
                if part.is_none() {
                    return Some(node);
                }
            }
        }
        None
    }
}

fn node_name_matches(name: &str, want: &str) -> bool {
    name == want || (!want.contains('@') && name.split('@').next() == Some(want))
}

/// Iterator over the nodes (see [`Fdt::nodes`]).
pub struct Nodes<'a> {
    fdt: Fdt<'a>,
    at: usize,
    depth: usize,
    /// `#address-cells`, `#size-cells` each open node gives its children, by depth.
    cells: [(u32, u32); MAX_DEPTH + 1],
    done: bool,
}

impl<'a> Iterator for Nodes<'a> {
    type Item = Node<'a>;

    fn next(&mut self) -> Option<Node<'a>> {
        while !self.done {
            let Some(tok) = self.fdt.token(self.at) else {
                self.done = true;
                break;
            };
            match tok {
                BEGIN_NODE => {
                    let name = cstr(self.fdt.structs.get(self.at.checked_add(4)?..)?)?;
                    let props_at = next_token(self.at, 5, name.len())?;
                    if self.depth >= MAX_DEPTH {
                        self.done = true;
                        break;
                    }
                    let parent_cells = if self.depth == 0 {
                        (2, 1)
                    } else {
                        self.cells[self.depth - 1]
                    };
                    let node = Node {
                        fdt: self.fdt,
                        name,
                        depth: self.depth,
                        props_at,
                        parent_cells,
                    };
                    // What this node gives its children (the spec's defaults: 2 and 1).
                    let own = (
                        node.prop_u32("#address-cells").unwrap_or(2),
                        node.prop_u32("#size-cells").unwrap_or(1),
                    );
                    self.cells[self.depth] = own;
                    self.depth += 1;
                    self.at = props_at;
                    return Some(node);
                }
                END_NODE => {
                    self.depth = self.depth.saturating_sub(1);
                    self.at = self.at.checked_add(4)?;
                }
                PROP => {
                    let len = self.fdt.token(self.at.checked_add(4)?)? as usize;
                    self.at = next_token(self.at, 12, len)?;
                }
                NOP => self.at = self.at.checked_add(4)?,
                _ => self.done = true, // END or garbage
            }
        }
        None
    }
}

impl<'a> Node<'a> {
    /// The node's properties: (name, value).
    pub fn props(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> {
        let fdt = self.fdt;
        let mut at = self.props_at;
        core::iter::from_fn(move || loop {
            match fdt.token(at)? {
                PROP => {
                    let len = fdt.token(at.checked_add(4)?)? as usize;
                    let nameoff = fdt.token(at.checked_add(8)?)? as usize;
                    let start = at.checked_add(12)?;
                    let value = fdt.structs.get(start..start.checked_add(len)?)?;
                    let name = cstr(fdt.strings.get(nameoff..)?)?;
                    at = next_token(at, 12, len)?;
                    return Some((name, value));
                }
                NOP => at = at.checked_add(4)?,
                _ => return None, // a child node, the node's end, or garbage
            }
        })
    }

    pub fn prop(&self, name: &str) -> Option<&'a [u8]> {
        self.props().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    pub fn prop_u32(&self, name: &str) -> Option<u32> {
        be32(self.prop(name)?, 0)
    }

    /// A string property (the first string of a list).
    pub fn prop_str(&self, name: &str) -> Option<&'a str> {
        cstr(self.prop(name)?)
    }

    /// Whether `compatible` lists `compat`.
    pub fn is_compatible(&self, compat: &str) -> bool {
        self.prop("compatible")
            .is_some_and(|v| v.split(|&b| b == 0).any(|s| s == compat.as_bytes()))
    }

    /// Entry `i` of `reg`: (address, size), read with the parent's cells.
    pub fn reg(&self, i: usize) -> Option<(u64, u64)> {
        let (ac, sc) = self.parent_cells;
        if ac > 2 || sc > 2 {
            return None;
        }
        let stride = 4 * (ac + sc) as usize;
        let v = self.prop("reg")?;
        let entry = v.get(i.checked_mul(stride)?..i.checked_add(1)?.checked_mul(stride)?)?;
        let (addr, rest) = cells(entry, ac)?;
        let (size, _) = cells(rest, sc)?;
        Some((addr, size))
    }

    /// Whether `status` is absent, "okay" or "ok".
    pub fn enabled(&self) -> bool {
        matches!(self.prop_str("status"), None | Some("okay" | "ok"))
    }

    /// The node's children (each one level deeper, in order).
    pub fn children(&self) -> impl Iterator<Item = Node<'a>> {
        let depth = self.depth;
        let start = self.props_at;
        let mut nodes = Nodes {
            fdt: self.fdt,
            at: start,
            depth: depth + 1,
            cells: [(2, 1); MAX_DEPTH + 1],
            done: false,
        };
        // The children read `reg` with this node's cells.
        let own = (
            self.prop_u32("#address-cells").unwrap_or(2),
            self.prop_u32("#size-cells").unwrap_or(1),
        );
        if depth < MAX_DEPTH {
            nodes.cells[depth] = own;
        }
        nodes
            .take_while(move |n| n.depth > depth)
            .filter(move |n| n.depth == depth + 1)
    }
}

/// The 32-bit cells of a property value, big-endian.
pub fn u32s(v: &[u8]) -> impl Iterator<Item = u32> + '_ {
    v.chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
}
