//! Tracepoint `format` files (tracefs `events/SYSTEM/NAME/format`): the event's id and where
//! each field of its raw record lies. Layouts change between kernels (fields are added, moved,
//! widened), so trapvisor reads them at start-up and never assumes an offset.
//!
//! ```text
//! name: kvm_exit
//! ID: 103
//! format:
//!         field:unsigned short common_type;       offset:0;       size:2; signed:0;
//!         field:unsigned int exit_reason; offset:8;       size:4; signed:0;
//!         field:char comm[16];    offset:12;      size:16;        signed:1;
//!
//! print fmt: "..."
//! ```
use std::collections::HashMap;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("no 'ID:' line")]
    NoId,
    #[error("bad 'ID:' line: {0}")]
    BadId(String),
    #[error("bad field line: {0}")]
    BadField(String),
}

/// One field of a raw record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: usize,
    pub size: usize,
    pub signed: bool,
}

impl Field {
    /// The field's value in `raw` as an integer (1, 2, 4 or 8 bytes, sign-extended when the
    /// field is signed); `None` when the record is too short or the field is not an integer.
    pub fn read(&self, raw: &[u8]) -> Option<i128> {
        let b = raw.get(self.offset..self.offset.checked_add(self.size)?)?;
        let v: i128 = match (self.size, self.signed) {
            (1, false) => i128::from(b[0]),
            (1, true) => i128::from(b[0] as i8),
            (2, false) => i128::from(u16::from_ne_bytes([b[0], b[1]])),
            (2, true) => i128::from(i16::from_ne_bytes([b[0], b[1]])),
            (4, s) => {
                let x = [b[0], b[1], b[2], b[3]];
                if s {
                    i128::from(i32::from_ne_bytes(x))
                } else {
                    i128::from(u32::from_ne_bytes(x))
                }
            }
            (8, s) => {
                let mut x = [0u8; 8];
                x.copy_from_slice(b);
                if s {
                    i128::from(i64::from_ne_bytes(x))
                } else {
                    i128::from(u64::from_ne_bytes(x))
                }
            }
            _ => return None,
        };
        Some(v)
    }

    /// The value as u64 (a negative value wraps, as the kernel's printf would show it).
    pub fn u64(&self, raw: &[u8]) -> Option<u64> {
        self.read(raw).map(|v| v as u64)
    }
}

/// A parsed format file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFormat {
    pub name: String,
    pub id: u64,
    pub fields: HashMap<String, Field>,
}

impl EventFormat {
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.get(name)
    }
}

/// Takes `key:value;` out of a field line part (`offset:8`).
fn number(part: &str, key: &str) -> Option<usize> {
    part.trim().strip_prefix(key)?.trim().parse().ok()
}

/// The field's name from its C declaration: the last identifier before any `[N]`
/// (`unsigned int exit_reason` → `exit_reason`, `char comm[16]` → `comm`,
/// `__data_loc char[] name` → `name`).
fn field_name(decl: &str) -> Option<String> {
    let decl = decl.trim();
    let base = match decl.find('[') {
        // `char[] name`: the brackets belong to the type; the name follows them.
        Some(i)
            if decl[i..]
                .find(']')
                .is_some_and(|j| !decl[i + j + 1..].trim().is_empty()) =>
        {
            decl
        }
        Some(i) => &decl[..i],
        None => decl,
    };
    let name = base
        .rsplit(|c: char| c.is_whitespace() || c == '*' || c == ']')
        .next()?;
    let ok = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    ok.then(|| name.to_string())
}

/// Parses one `field:DECL; offset:N; size:N; signed:N;` line.
fn parse_field(line: &str) -> Result<(String, Field), FormatError> {
    let bad = || FormatError::BadField(line.trim().chars().take(120).collect());
    let rest = line.trim().strip_prefix("field:").ok_or_else(bad)?;
    let mut parts = rest.split(';');
    let name = field_name(parts.next().ok_or_else(bad)?).ok_or_else(bad)?;
    let (mut offset, mut size, mut signed) = (None, None, false);
    for p in parts {
        if let Some(v) = number(p, "offset:") {
            offset = Some(v);
        } else if let Some(v) = number(p, "size:") {
            size = Some(v);
        } else if let Some(v) = number(p, "signed:") {
            signed = v != 0;
        }
    }
    let (offset, size) = (offset.ok_or_else(bad)?, size.ok_or_else(bad)?);
    // No tracepoint record comes near 64 KiB: a larger field is not a real layout.
    if offset > 0xffff || size == 0 || size > 0xffff {
        return Err(bad());
    }
    Ok((
        name,
        Field {
            offset,
            size,
            signed,
        },
    ))
}

/// Parses a format file. Lines it does not know (`print fmt`, blank lines) are skipped; a
/// field line it cannot read is an error, so a layout change is never half-understood.
pub fn parse(text: &str) -> Result<EventFormat, FormatError> {
    let mut name = String::new();
    let mut id = None;
    let mut fields = HashMap::new();
    for line in text.lines() {
        let t = line.trim();
        if let Some(n) = t.strip_prefix("name:") {
            name = n.trim().to_string();
        } else if let Some(v) = t.strip_prefix("ID:") {
            id = Some(
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| FormatError::BadId(v.trim().chars().take(40).collect()))?,
            );
        } else if t.starts_with("field:") {
            let (n, f) = parse_field(t)?;
            fields.insert(n, f);
        } else if t.starts_with("print fmt:") {
            break;
        }
    }
    Ok(EventFormat {
        name,
        id: id.ok_or(FormatError::NoId)?,
        fields,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KVM_EXIT: &str = "name: kvm_exit
ID: 103
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:unsigned int exit_reason;\toffset:8;\tsize:4;\tsigned:0;
\tfield:unsigned long guest_rip;\toffset:16;\tsize:8;\tsigned:0;
\tfield:u32 isa;\toffset:24;\tsize:4;\tsigned:0;
\tfield:char comm[16];\toffset:28;\tsize:16;\tsigned:1;
\tfield:__data_loc char[] name;\toffset:44;\tsize:4;\tsigned:1;
\tfield:int errno;\toffset:48;\tsize:4;\tsigned:1;

print fmt: \"reason %s field:fake; offset:1;\", REC->exit_reason
";

    #[test]
    fn parses_ids_offsets_sizes_and_signs() {
        let f = parse(KVM_EXIT).unwrap();
        assert_eq!((f.name.as_str(), f.id), ("kvm_exit", 103));
        assert_eq!(
            f.field("exit_reason"),
            Some(&Field {
                offset: 8,
                size: 4,
                signed: false
            })
        );
        assert_eq!(f.field("guest_rip").unwrap().offset, 16);
        assert_eq!(f.field("comm").unwrap().size, 16);
        assert_eq!(f.field("name").unwrap().offset, 44);
        assert!(f.field("common_pid").unwrap().signed);
        // print fmt is not read as fields.
        assert!(f.field("fake").is_none());
        let mut raw = vec![0u8; 52];
        raw[8..12].copy_from_slice(&0x400u32.to_ne_bytes());
        raw[48..52].copy_from_slice(&(-4i32).to_ne_bytes());
        assert_eq!(f.field("exit_reason").unwrap().u64(&raw), Some(0x400));
        assert_eq!(f.field("errno").unwrap().read(&raw), Some(-4));
        // A record shorter than the field, and a field that is not an integer.
        assert_eq!(f.field("isa").unwrap().read(&raw[..20]), None);
        assert_eq!(f.field("comm").unwrap().read(&raw), None);
    }

    #[test]
    fn odd_inputs_are_errors_or_skipped_never_panics() {
        assert_eq!(parse(""), Err(FormatError::NoId));
        assert!(matches!(parse("ID: x"), Err(FormatError::BadId(_))));
        assert!(matches!(parse("ID: -1"), Err(FormatError::BadId(_))));
        for bad in [
            "ID: 1\nfield:int a;\toffset:8;",
            "ID: 1\nfield:int a;\tsize:4;",
            "ID: 1\nfield:;\toffset:8;\tsize:4;",
            "ID: 1\nfield:int 9a;\toffset:8;\tsize:4;",
            "ID: 1\nfield:int a;\toffset:99999999999999999999;\tsize:4;",
            "ID: 1\nfield:int a;\toffset:8;\tsize:0;",
            "ID: 1\nfield:int a;\toffset:8;\tsize:1000000;",
            "ID: 1\nfield:int a-b;\toffset:8;\tsize:4;",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        // Unknown lines, CRLF, odd spacing and a field without signed: still fine.
        let ok = parse("junk\r\nID:  7 \r\n  field:int   x ;offset: 8 ; size: 4 ;\r\nfoo: bar\n")
            .unwrap();
        assert_eq!(ok.id, 7);
        assert_eq!(
            ok.field("x"),
            Some(&Field {
                offset: 8,
                size: 4,
                signed: false
            })
        );
        // A 3-byte field reads as nothing; an offset past the record too.
        let f = Field {
            offset: 2,
            size: 3,
            signed: false,
        };
        assert_eq!(f.read(&[0; 8]), None);
        let f = Field {
            offset: usize::MAX,
            size: 8,
            signed: false,
        };
        assert_eq!(f.read(&[0; 8]), None);
        // Every byte sequence of a small alphabet parses or errs without a panic.
        let alphabet = [
            "field:", "int a", ";", "offset:", "size:", "8", "signed:1", "\n", "ID: 3", "[", "]",
        ];
        let mut n = 0u32;
        for a in &alphabet {
            for b in &alphabet {
                for c in &alphabet {
                    for d in &alphabet {
                        let _ = parse(&format!("{a}{b}{c}{d}"));
                        n += 1;
                    }
                }
            }
        }
        assert_eq!(n, 11 * 11 * 11 * 11);
    }
}
