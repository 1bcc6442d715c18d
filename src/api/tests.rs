use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::*;

#[derive(Default)]
struct FakeVm {
    pauses: AtomicU32,
    shutdowns: AtomicU32,
    /// What /stats answers (null: a small default).
    stats: Value,
}

impl VmApi for FakeVm {
    fn info(&self) -> Value {
        json!({"state": "running"})
    }
    fn stats(&self) -> Value {
        if self.stats.is_null() {
            json!({"all": [], "vcpus": []})
        } else {
            self.stats.clone()
        }
    }
    fn map(&self) -> Value {
        json!({"pio": [], "mmio": []})
    }
    fn pause(&self) -> Result<(), String> {
        if self.pauses.fetch_add(1, Ordering::SeqCst) == 0 {
            Ok(())
        } else {
            Err("already paused".into())
        }
    }
    fn resume(&self) -> Result<(), String> {
        Ok(())
    }
    fn shutdown(&self) {
        self.shutdowns.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn routes_answer_by_method_and_path() {
    let vm = FakeVm::default();
    assert_eq!(route("GET", "/vm", 0, &vm).body["state"], "running");
    assert_eq!(route("GET", "/stats?x=1", 0, &vm).status, 200);
    assert_eq!(route("GET", "/map", 0, &vm).status, 200);
    assert_eq!(route("PUT", "/vm/pause", 0, &vm).status, 204);
    assert_eq!(route("PUT", "/vm/pause", 0, &vm).status, 409);
    assert_eq!(route("PUT", "/vm/resume", 0, &vm).status, 204);
    assert_eq!(route("PUT", "/vm/shutdown", 0, &vm).status, 204);
    assert_eq!(vm.shutdowns.load(Ordering::SeqCst), 1);
}

#[test]
fn bad_routes_methods_and_bodies_get_4xx() {
    let vm = FakeVm::default();
    assert_eq!(route("GET", "/nope", 0, &vm).status, 404);
    assert_eq!(route("GET", "/", 0, &vm).status, 404);
    assert_eq!(route("POST", "/vm", 0, &vm).status, 405);
    assert_eq!(route("GET", "/vm/shutdown", 0, &vm).status, 405);
    assert_eq!(route("DELETE", "/stats", 0, &vm).status, 405);
    assert_eq!(route("PUT", "/vm/shutdown", MAX_BODY + 1, &vm).status, 413);
    // Nothing happened to the VM.
    assert_eq!(vm.shutdowns.load(Ordering::SeqCst), 0);
}

fn socket_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("trapvisor-api-{}-{name}.sock", std::process::id()))
}

fn raw(path: &Path, request: &[u8]) -> String {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn server_answers_over_the_socket_and_survives_bad_clients() {
    let path = socket_path("serve");
    let vm = Arc::new(FakeVm::default());
    let server =
        ApiServer::start(&path, vm.clone(), SeccompMode::Off, SocketAccess::Owner).unwrap();

    // A client that connects and never sends must not block the others.
    let silent = UnixStream::connect(&path).unwrap();

    let v = client::request(&path, "GET", "/vm").unwrap();
    assert_eq!(v["state"], "running");
    let err = client::request(&path, "GET", "/bogus").unwrap_err();
    assert!(
        matches!(err, client::ClientError::Status { status: 404, .. }),
        "{err}"
    );
    let err = client::request(&path, "POST", "/stats").unwrap_err();
    assert!(
        matches!(err, client::ClientError::Status { status: 405, .. }),
        "{err}"
    );

    // Malformed HTTP: a 4xx answer or a closed connection.
    let answer = raw(&path, b"THIS IS NOT HTTP\r\n\r\n");
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
        "{answer}"
    );
    // A body over the limit.
    let big = format!(
        "PUT /vm/shutdown HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        MAX_BODY + 10,
        "a".repeat(MAX_BODY + 10)
    );
    let answer = raw(&path, big.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(vm.shutdowns.load(Ordering::SeqCst), 0);

    // Still serving.
    assert_eq!(
        client::request(&path, "GET", "/map").unwrap()["pio"],
        json!([])
    );
    client::request(&path, "PUT", "/vm/shutdown").unwrap();
    assert_eq!(vm.shutdowns.load(Ordering::SeqCst), 1);
    drop(silent);
    drop(server);
    assert!(!path.exists(), "socket left behind");
}

#[test]
fn existing_or_unwritable_socket_paths_are_refused() {
    let path = socket_path("exists");
    std::fs::write(&path, b"").unwrap();
    let err = ApiServer::start(
        &path,
        Arc::new(FakeVm::default()),
        SeccompMode::Off,
        SocketAccess::Owner,
    )
    .unwrap_err();
    assert!(matches!(err, ApiError::Exists(_)), "{err}");
    std::fs::remove_file(&path).unwrap();
    let err = ApiServer::start(
        Path::new("/nonexistent-dir/api.sock"),
        Arc::new(FakeVm::default()),
        SeccompMode::Off,
        SocketAccess::Owner,
    )
    .unwrap_err();
    assert!(matches!(err, ApiError::Listen { .. }), "{err}");
}

#[test]
fn client_parses_answers_and_errors() {
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"a\": true}";
    assert_eq!(client::parse_response(ok).unwrap()["a"], true);
    let no_body = b"HTTP/1.1 204 No Content\r\n\r\n";
    assert_eq!(client::parse_response(no_body).unwrap(), Value::Null);
    let err = b"HTTP/1.1 409 Conflict\r\n\r\n{\"error\":\"stopping\"}";
    assert!(matches!(
        client::parse_response(err),
        Err(client::ClientError::Status { status: 409, ref message }) if message == "stopping"
    ));
    assert!(client::parse_response(b"garbage").is_err());
    assert!(client::parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
    // A chunked body (what tiny_http sent for bodies over 32 KiB before the threshold was
    // lifted) is put back together; a broken one is an error, not a panic.
    let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n7;x=y\r\n: true}\r\n0\r\n\r\n";
    assert_eq!(client::parse_response(chunked).unwrap()["a"], true);
    for bad in [
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n{}\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}",
    ] {
        assert!(client::parse_response(bad).is_err());
    }
}

#[test]
fn a_large_answer_has_a_content_length() {
    let big = FakeVm {
        stats: json!({"pad": "x".repeat(100_000)}),
        ..FakeVm::default()
    };
    let path = socket_path("big");
    let _server =
        ApiServer::start(&path, Arc::new(big), SeccompMode::Off, SocketAccess::Owner).unwrap();
    let mut s = UnixStream::connect(&path).unwrap();
    s.write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let head = String::from_utf8_lossy(&raw[..raw.len().min(400)]).to_ascii_lowercase();
    assert!(
        head.contains("content-length:") && !head.contains("chunked"),
        "{head}"
    );
    assert_eq!(
        client::parse_response(&raw).unwrap()["pad"]
            .as_str()
            .unwrap()
            .len(),
        100_000
    );
}

#[test]
fn tables_and_svg_from_json() {
    let stats = json!({
        "vcpus": [{"id": 0}],
        "all": [
            {"reason": "io-out", "where": "", "count": 3, "p50_us": 1.5, "p99_us": 2.0,
             "max_us": 3.0, "percentiles": [[0.0, 1.0], [0.5, 1.5], [1.0, 3.0]]},
            {"reason": "io-out", "where": "pio serial0 THR/RBR", "count": 3, "p50_us": 1.5,
             "p99_us": 2.0, "max_us": 3.0, "percentiles": []}
        ],
        "unowned": {"pio": [{"addr": 128, "count": 2}], "mmio": []}
    });
    let t = client::format_stats(&stats);
    assert!(t.starts_with("exits: 3 in all, 1 vCPU(s)"), "{t}");
    assert!(t.contains("  pio serial0 THR/RBR"), "{t}");
    assert!(t.contains("unowned accesses: pio 0x80 x2"), "{t}");
    let svg = client::histogram_svg(&stats);
    assert!(
        svg.starts_with("<svg") && svg.contains("<polyline") && svg.contains("io-out (3 exits)")
    );
    let map = json!({"pio": [{"base": 1016, "size": 8, "device": "serial0", "region": "16550"}],
                     "mmio": []});
    let m = client::format_map(&map);
    assert!(
        m.contains("0x3f8-0x3ff") && m.contains("serial0") && m.contains("16550"),
        "{m}"
    );
    assert!(!m.contains("system"), "{m}");
    // aarch64's extra lines: the GIC's frames, an MSI-X vector that reaches the ITS.
    let map = json!({"pio": [], "mmio": [],
        "msix_routes": [{"device": "virtio-net@00:02.0", "vector": 1, "used_by": ["queue 0"],
                         "gsi": 65, "address": 0x3f7e_0040u64, "data": 0, "devid": 16,
                         "target": "gic-its", "path": "irqfd", "armed": true, "masked": false}],
        "system": [{"base": 0x3f7d_0000u64, "size": 0x2_0000, "name": "gic-its",
                    "what": "in-kernel (KVM)"}]});
    let m = client::format_map(&map);
    assert!(m.contains("0x10") && m.contains("-> gic-its"), "{m}");
    assert!(
        m.contains("system (not on a bus):") && m.contains("0x3f7d0000-0x3f7effff"),
        "{m}"
    );
}
