//! The CMOS RTC through real port I/O: the built-in guest's `rtc` reads the date the way Linux
//! does (0x70/0x71, after update-in-progress, twice until two reads agree) and it must be the
//! host's time.
mod common;

use std::time::{SystemTime, UNIX_EPOCH};

#[test]
fn the_guest_reads_the_hosts_date_from_the_cmos_rtc() {
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let out = common::run(&["run", "--cmdline", "rtc"]);
    let after = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(out.code, Some(0), "{}", out.dump());
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("rtc: "))
        .unwrap_or_else(|| panic!("no rtc line: {}", out.dump()));
    let epoch: u64 = line
        .split(' ')
        .find_map(|w| w.strip_prefix("epoch="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no epoch in '{line}'"));
    // Whole seconds: the guest's read may round down below `before`.
    assert!(
        epoch + 1 >= before && epoch <= after,
        "{line} not in {before}..={after}"
    );
    assert!(line.contains("mode=bcd,24h"), "{line}");
}

/// `--no-legacy` has no RTC: the ports read all-ones and the guest says so at once (it would
/// otherwise wait on an update-in-progress bit that never clears).
#[test]
fn without_legacy_devices_there_is_no_rtc() {
    let out = common::run(&["run", "--no-legacy", "--cmdline", "rtc"]);
    assert_ne!(out.code, Some(0), "{}", out.dump());
    assert!(
        out.stdout
            .contains("rtc: no CMOS RTC (register A reads 0xff)"),
        "{}",
        out.dump()
    );
}
