//! `trapvisor ctl`: talks to a running VM's API socket and prints tables.
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {path}: {err}")]
    Connect { path: String, err: std::io::Error },
    #[error("API request failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed HTTP answer: {0}")]
    Http(String),
    #[error("the VM answered {status}: {message}")]
    Status { status: u16, message: String },
}

/// Sends one request and returns the JSON body (`Null` when empty).
pub fn request(socket: &Path, method: &str, path: &str) -> Result<Value, ClientError> {
    let mut s = UnixStream::connect(socket).map_err(|err| ClientError::Connect {
        path: socket.display().to_string(),
        err,
    })?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw)
}

/// Parses an HTTP/1.1 response with httparse; errors for non-2xx statuses.
pub fn parse_response(raw: &[u8]) -> Result<Value, ClientError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let start = match resp.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err(ClientError::Http("truncated".into())),
        Err(e) => return Err(ClientError::Http(e.to_string())),
    };
    let status = resp.code.unwrap_or(0);
    let chunked = resp.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            && String::from_utf8_lossy(h.value)
                .to_ascii_lowercase()
                .contains("chunked")
    });
    let dechunked;
    let body = if chunked {
        dechunked = dechunk(&raw[start..])?;
        &dechunked[..]
    } else {
        &raw[start..]
    };
    let value: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(body).map_err(|e| ClientError::Http(e.to_string()))?
    };
    if !(200..300).contains(&status) {
        let message = value["error"].as_str().unwrap_or("").to_string();
        return Err(ClientError::Status { status, message });
    }
    Ok(value)
}

/// The body of a chunked HTTP answer: each chunk's size line, its data, up to the last one.
fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, ClientError> {
    let bad = |why: &str| ClientError::Http(format!("bad chunked body: {why}"));
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| bad("no chunk size line"))?;
        let line = std::str::from_utf8(&b[..eol]).map_err(|_| bad("chunk size not text"))?;
        let hex = line.split(';').next().unwrap_or("").trim();
        let n = usize::from_str_radix(hex, 16).map_err(|_| bad("chunk size not hex"))?;
        b = &b[eol + 2..];
        if n == 0 {
            return Ok(out);
        }
        if b.len() < n + 2 {
            return Err(bad("truncated chunk"));
        }
        out.extend_from_slice(&b[..n]);
        b = &b[n + 2..];
    }
}

/// The exit tables from a `/stats` answer, for all vCPUs together: trapvisor's, then KVM's.
pub fn format_stats(stats: &Value) -> String {
    format_stats_since(stats, None)
}

/// As `format_stats`; the kernel table's rates are taken against `prev` (an earlier answer)
/// when given (`ctl top`), else averaged since the VM started.
pub fn format_stats_since(stats: &Value, prev: Option<&Value>) -> String {
    let mut out = String::new();
    let total: u64 = stats["all"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter(|r| r["where"].as_str() == Some(""))
                .filter_map(|r| r["count"].as_u64())
                .sum()
        })
        .unwrap_or(0);
    out.push_str(&format!(
        "exits: {total} in all, {} vCPU(s)\n",
        stats["vcpus"].as_array().map_or(0, |v| v.len())
    ));
    out.push_str(&format!(
        "{:<14} {:<34} {:>10} {:>9} {:>9} {:>9}\n",
        "REASON", "WHERE", "COUNT", "P50 us", "P99 us", "MAX us"
    ));
    for r in stats["all"].as_array().into_iter().flatten() {
        let place = r["where"].as_str().unwrap_or("");
        let place = if place.is_empty() {
            "(all)".to_string()
        } else {
            format!("  {place}")
        };
        out.push_str(&format!(
            "{:<14} {:<34} {:>10} {:>9.2} {:>9.2} {:>9.2}\n",
            r["reason"].as_str().unwrap_or(""),
            place,
            r["count"].as_u64().unwrap_or(0),
            r["p50_us"].as_f64().unwrap_or(0.0),
            r["p99_us"].as_f64().unwrap_or(0.0),
            r["max_us"].as_f64().unwrap_or(0.0),
        ));
    }
    let unowned: Vec<String> = ["pio", "mmio"]
        .iter()
        .flat_map(|bus| {
            stats["unowned"][bus]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |e| {
                    format!(
                        "{bus} {:#x} x{}",
                        e["addr"].as_u64().unwrap_or(0),
                        e["count"].as_u64().unwrap_or(0)
                    )
                })
        })
        .collect();
    if !unowned.is_empty() {
        out.push_str(&format!("unowned accesses: {}\n", unowned.join(", ")));
    }
    out.push_str(&crate::trace::kstats::format_table(
        &stats["kernel"],
        prev.map(|p| &p["kernel"]),
    ));
    out.push_str(&crate::trace::kernel::exits::format_table(
        &stats["kernel_trace"],
    ));
    out.push_str(&format_devices(stats));
    let sources: Vec<String> = stats["event_loop"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            format!(
                "{} x{}",
                e["source"].as_str().unwrap_or(""),
                e["dispatches"].as_u64().unwrap_or(0)
            )
        })
        .collect();
    if !sources.is_empty() {
        out.push_str(&format!("event loop dispatches: {}\n", sources.join(", ")));
    }
    out
}

fn opt(v: &Value) -> String {
    v.as_u64()
        .map_or_else(|| "-".to_string(), |n| n.to_string())
}

/// `words` joined with ", " into lines of about `width` characters, each indented.
fn wrap(words: &[String], indent: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for w in words {
        if !line.is_empty() && line.len() + w.len() + 2 > width {
            out.push_str(&format!("{indent}{line}\n"));
            line.clear();
        }
        if !line.is_empty() {
            line.push_str(", ");
        }
        line.push_str(w);
    }
    if !line.is_empty() {
        out.push_str(&format!("{indent}{line}\n"));
    }
    out
}

/// Per device: queues (kicks by path), interrupts per vector, non-zero device counters.
pub fn format_devices(stats: &Value) -> String {
    let mut out = String::new();
    for d in stats["devices"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{} {}{}\n",
            d["device"].as_str().unwrap_or(""),
            d["options"].as_str().unwrap_or(""),
            if d["own_threads"] == true {
                " (kicks wait on the device's worker threads)"
            } else {
                ""
            }
        ));
        out.push_str(&format!(
            "  {:<6} {:>5} {:>7} {:>14} {:>12} {:>11}\n",
            "QUEUE", "SIZE", "VECTOR", "IOEVENTFD", "KICKS(EVTFD)", "KICKS(EXIT)"
        ));
        for q in d["queues"].as_array().into_iter().flatten() {
            if q["enabled"] != true {
                continue;
            }
            out.push_str(&format!(
                "  {:<6} {:>5} {:>7} {:>14} {:>12} {:>11}\n",
                opt(&q["queue"]),
                opt(&q["size"]),
                opt(&q["vector"]),
                q["ioeventfd"]
                    .as_u64()
                    .map_or_else(|| "-".to_string(), |a| format!("{a:#x}")),
                match q["waiter"].as_str() {
                    // Its kicks go to the kernel: none reach trapvisor to count.
                    Some(w) => w.to_string(),
                    None => opt(&q["kicks_ioeventfd"]),
                },
                opt(&q["kicks_exit"]),
            ));
        }
        let vhost: Vec<String> = d["queues"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|q| q["waiter"] == "vhost-net" && q["enabled"] == true)
            .map(|q| opt(&q["queue"]))
            .collect();
        if !vhost.is_empty() {
            out.push_str(&format!(
                "  queues {} are served by the kernel's vhost-net: their kicks, frames and \
                 interrupts do not pass through trapvisor (not counted here)\n",
                vhost.join(", ")
            ));
        }
        out.push_str(&format!(
            "  {:<6} {:>5} {:<15} {:>10} {:>8}\n",
            "VECTOR", "GSI", "PATH", "DELIVERED", "PENDING"
        ));
        for v in d["interrupts"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "  {:<6} {:>5} {:<15} {:>10} {:>8}\n",
                opt(&v["vector"]),
                opt(&v["gsi"]),
                v["path"].as_str().unwrap_or(""),
                opt(&v["delivered"]),
                v["pending"] == true,
            ));
        }
        let counters: Vec<String> = d["counters"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, v)| v.as_u64().is_some_and(|n| n > 0))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if !counters.is_empty() {
            out.push_str("  counters (non-zero):\n");
            out.push_str(&wrap(&counters, "    ", 96));
        }
        out.push_str(&tx_per_drain(&d["counters"]));
    }
    out
}

/// For each transmit queue that sent frames, what one drain did on average: chains per
/// wakeup and per pass, frames per interrupt, bytes per frame.
fn tx_per_drain(c: &Value) -> String {
    let get = |k: String| c[&k].as_u64().unwrap_or(0) as f64;
    let mut out = String::new();
    for q in 0.. {
        let frames = get(format!("tx{q}.frames"));
        if c.get(format!("tx{q}.frames")).is_none() {
            break;
        }
        if frames == 0.0 {
            continue;
        }
        let per = |n: f64| if n > 0.0 { frames / n } else { 0.0 };
        out.push_str(&format!(
            "  tx{q}: {:.2} frames/wakeup, {:.2} frames/pass, {:.2} frames/interrupt, {:.0} B/frame\n",
            per(get(format!("tx{q}.wakeups"))),
            per(get(format!("tx{q}.passes"))),
            per(get(format!("tx{q}.interrupts"))),
            get(format!("tx{q}.bytes")) / frames,
        ));
    }
    out
}

/// Both address spaces from a `/map` answer.
pub fn format_map(map: &Value) -> String {
    let mut out = String::new();
    for bus in ["pio", "mmio"] {
        out.push_str(&format!("{bus}:\n"));
        out.push_str(&format!(
            "  {:<35} {:>12}  {:<16} {}\n",
            "RANGE", "SIZE", "DEVICE", "REGION"
        ));
        for e in map[bus].as_array().into_iter().flatten() {
            let base = e["base"].as_u64().unwrap_or(0);
            let size = e["size"].as_u64().unwrap_or(0);
            out.push_str(&format!(
                "  {:<35} {:>12}  {:<16} {}\n",
                format!("{:#x}-{:#x}", base, base + size.saturating_sub(1)),
                format!("{size:#x}"),
                e["device"].as_str().unwrap_or(""),
                e["region"].as_str().unwrap_or("")
            ));
        }
    }
    let evts = map["ioeventfds"]
        .as_array()
        .map_or(&[][..], |v| v.as_slice());
    if !evts.is_empty() {
        out.push_str("ioeventfds (a guest write here signals an eventfd in KVM, no exit):\n");
        out.push_str(&format!(
            "  {:<14} {:>4}  {:<22} {:>5}  {}\n",
            "ADDR", "SIZE", "DEVICE", "QUEUE", "WAITER"
        ));
        for e in evts {
            out.push_str(&format!(
                "  {:<14} {:>4}  {:<22} {:>5}  {}\n",
                format!("{:#x}", e["addr"].as_u64().unwrap_or(0)),
                match e["size"].as_u64() {
                    Some(0) => "any".to_string(),
                    _ => opt(&e["size"]),
                },
                e["device"].as_str().unwrap_or(""),
                opt(&e["queue"]),
                e["waiter"].as_str().unwrap_or("")
            ));
        }
    }
    let devices = map["devices"].as_array().map_or(&[][..], |v| v.as_slice());
    if !devices.is_empty() {
        out.push_str("virtio devices:\n");
        for d in devices {
            out.push_str(&format!(
                "  {:<22} {} {}\n",
                d["device"].as_str().unwrap_or(""),
                d["options"].as_str().unwrap_or(""),
                d["describe"].as_str().unwrap_or("")
            ));
        }
    }
    let routes = map["msix_routes"]
        .as_array()
        .map_or(&[][..], |v| v.as_slice());
    if !routes.is_empty() {
        out.push_str("msi-x vectors:\n");
        out.push_str(&format!(
            "  {:<22} {:>6}  {:<12} {:>5} {:<12} {:>6} {:>6}  {:<15} {}\n",
            "DEVICE", "VECTOR", "USED BY", "GSI", "ADDRESS", "DATA", "DEVID", "PATH", "STATE"
        ));
        for r in routes {
            let users: Vec<&str> = r["used_by"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|u| u.as_str())
                .collect();
            let state = match (r["armed"] == true, r["masked"] == true) {
                (true, _) => "armed",
                (false, true) => "masked",
                (false, false) => "idle",
            };
            out.push_str(&format!(
                "  {:<22} {:>6}  {:<12} {:>5} {:<12} {:>6} {:>6}  {:<15} {}{}\n",
                r["device"].as_str().unwrap_or(""),
                opt(&r["vector"]),
                users.join("+"),
                opt(&r["gsi"]),
                format!("{:#x}", r["address"].as_u64().unwrap_or(0)),
                format!("{:#x}", r["data"].as_u64().unwrap_or(0)),
                format!("{:#x}", r["devid"].as_u64().unwrap_or(0)),
                r["path"].as_str().unwrap_or(""),
                state,
                match r["target"].as_str() {
                    Some(t) => format!(" -> {t}"),
                    None => String::new(),
                }
            ));
        }
    }
    let system = map["system"].as_array().map_or(&[][..], |v| v.as_slice());
    if !system.is_empty() {
        out.push_str("system (not on a bus):\n");
        for l in system {
            let base = l["base"].as_u64().unwrap_or(0);
            let size = l["size"].as_u64().unwrap_or(0);
            out.push_str(&format!(
                "  {:<35} {:>12}  {:<16} {}\n",
                format!("{:#x}-{:#x}", base, base + size.saturating_sub(1)),
                format!("{size:#x}"),
                l["name"].as_str().unwrap_or(""),
                l["what"].as_str().unwrap_or("")
            ));
        }
    }
    out
}

/// Draws the exit-latency distribution per reason as an SVG: one percentile curve per reason
/// (x: percentile on a log scale of 1/(1-q), y: latency in µs, log scale). Trapvisor's handling
/// time first; with `--trace-kernel`, below it the kernel's side: per hardware exit reason the
/// time from exit to entry (or, where KVM fires no kvm_exit, per KVM_RUN).
pub fn histogram_svg(stats: &Value) -> String {
    let user: Vec<&Value> = stats["all"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["where"].as_str() == Some(""))
        .collect();
    let kernel: Vec<&Value> = stats["kernel_trace"]["reasons"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let panels = if kernel.is_empty() { 1.0 } else { 2.0 };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
        H * panels
    );
    svg.push_str(&chart(
        "trapvisor exit handling latency by reason",
        &user,
        0.0,
    ));
    if !kernel.is_empty() {
        let title = if stats["kernel_trace"]["mode"] == "exits" {
            "kernel: exit to entry by hardware exit reason (--trace-kernel)"
        } else {
            "kernel: KVM_RUN (guest and KVM) by what it returned with (--trace-kernel)"
        };
        svg.push_str(&chart(title, &kernel, H));
    }
    svg.push_str("</svg>\n");
    svg
}

const W: f64 = 800.0;
const H: f64 = 480.0;

/// Text for SVG: `&`, `<` and `>` escaped.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One panel of percentile curves, `top` pixels down.
fn chart(title: &str, rows: &[&Value], top: f64) -> String {
    const M: f64 = 60.0;
    let colors = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    ];
    let max_us = rows
        .iter()
        .flat_map(|r| r["percentiles"].as_array().into_iter().flatten())
        .filter_map(|p| p[1].as_f64())
        .fold(1.0f64, f64::max);
    let (ymin, ymax) = (0.1f64.log10(), (max_us * 2.0).log10());
    let xmax = 5.0; // up to the 99.999th percentile
    let x = |q: f64| M + (1.0 / (1.0 - q.min(0.99999))).log10() / xmax * (W - 2.0 * M);
    let y = |us: f64| H - M - (us.max(0.1).log10() - ymin) / (ymax - ymin) * (H - 2.0 * M);
    let mut svg = format!(
        "<g transform=\"translate(0,{top})\">\n\
         <text x=\"{M}\" y=\"24\" font-size=\"16\">{}</text>\n\
         <line x1=\"{M}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
         <line x1=\"{M}\" y1=\"{M}\" x2=\"{M}\" y2=\"{}\" stroke=\"black\"/>\n",
        esc(title),
        H - M,
        W - M,
        H - M,
        H - M
    );
    for (q, label) in [
        (0.0, "0%"),
        (0.9, "90%"),
        (0.99, "99%"),
        (0.999, "99.9%"),
        (0.9999, "99.99%"),
    ] {
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{label}</text>\n",
            x(q),
            H - M + 18.0
        ));
    }
    let mut tick = 0.1f64;
    while tick <= max_us * 2.0 {
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{tick}</text>\n\
             <line x1=\"{M}\" y1=\"{:.1}\" x2=\"{}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\n",
            M - 6.0,
            y(tick) + 4.0,
            y(tick),
            W - M,
            y(tick)
        ));
        tick *= 10.0;
    }
    svg.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">percentile</text>\n\
         <text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">µs</text>\n",
        W / 2.0,
        H - 12.0,
        H / 2.0,
        H / 2.0
    ));
    for (i, r) in rows.iter().take(colors.len()).enumerate() {
        let color = colors[i % colors.len()];
        let points: Vec<String> = r["percentiles"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some(format!("{:.1},{:.1}", x(p[0].as_f64()?), y(p[1].as_f64()?))))
            .collect();
        svg.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n\
             <text x=\"{}\" y=\"{}\" fill=\"{color}\">{} ({} exits)</text>\n",
            points.join(" "),
            W - M - 180.0,
            M + 16.0 * i as f64,
            esc(r["reason"].as_str().unwrap_or("")),
            r["count"].as_u64().unwrap_or(0)
        ));
    }
    svg.push_str("</g>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_drain_averages_for_each_transmit_queue_that_sent() {
        let stats = serde_json::json!({"devices": [{
            "device": "virtio-net@00:01.0", "options": "", "queues": [], "interrupts": [],
            "counters": {
                "tx0.frames": 12, "tx0.wakeups": 3, "tx0.passes": 4, "tx0.interrupts": 6,
                "tx0.bytes": 12000, "tx1.frames": 0, "tx1.wakeups": 0,
            },
        }]});
        let out = format_devices(&stats);
        assert!(
            out.contains(
                "  tx0: 4.00 frames/wakeup, 3.00 frames/pass, 2.00 frames/interrupt, 1000 B/frame\n"
            ),
            "{out}"
        );
        assert!(!out.contains("tx1:"), "{out}");
    }

    /// Queues vhost-net serves show it as their kick waiter, not a zero count, and a line
    /// says why trapvisor counts nothing for them.
    #[test]
    fn vhost_queues_are_named_not_zero() {
        let q = |n: u16, waiter: Option<&str>| {
            serde_json::json!({"queue": n, "size": 256, "enabled": true, "vector": n + 1,
                "ioeventfd": 0xc000_3000u64 + 4 * u64::from(n), "kicks_ioeventfd": 0,
                "kicks_exit": 0, "waiter": waiter})
        };
        let stats = serde_json::json!({"devices": [{
            "device": "virtio-net@00:01.0", "options": "", "interrupts": [], "counters": {},
            "queues": [q(0, Some("vhost-net")), q(1, Some("vhost-net")), q(2, None)],
        }]});
        let out = format_devices(&stats);
        assert!(out.contains("vhost-net"), "{out}");
        assert!(
            out.contains("queues 0, 1 are served by the kernel's vhost-net"),
            "{out}"
        );
    }
}
