//! Hot reload end to end: real file edits in the ways editors and
//! orchestrators make them, SIGHUP and `POST /reload`, live revocation,
//! certificate rotation, and reloads under load.

mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::*;

/// A workspace whose service admits the network sets `clients` (a plain
/// file) and `extra` (a file inside a Kubernetes-style ConfigMap folder).
struct Setup {
    ws: Workspace,
    echo: Echo,
    clients: PathBuf,
    configmap: PathBuf,
}

impl Setup {
    fn new(clients: &str) -> Setup {
        let ws = Workspace::new();
        let echo = echo_upstream();
        let clients_path = ws.write("clients.txt", clients);
        // cm/extra.txt -> ..data/extra.txt, ..data -> ..v1: how the kubelet
        // lays out a mounted ConfigMap.
        let cm = ws.path("cm");
        std::fs::create_dir_all(cm.join("..v1")).unwrap();
        std::fs::write(cm.join("..v1/extra.txt"), "10.200.0.0/16\n").unwrap();
        std::os::unix::fs::symlink("..v1", cm.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/extra.txt", cm.join("extra.txt")).unwrap();
        Setup {
            ws,
            echo,
            clients: clients_path,
            configmap: cm,
        }
    }

    fn body(&self, extra_services: &str) -> String {
        format!(
            r#"
[networks.clients]
file = "clients.txt"
[networks.extra]
file = "cm/extra.txt"

[[device]]
id = "pump"
name = "Infusion pump server"

[[device.service]]
name = "web"
protocol = "tcp"
listen = "127.0.0.1:0"
upstream = "{up}"
allow = ["clients", "extra"]
{tls}
{extra_services}
"#,
            up = self.echo.addr,
            tls = self.ws.tls_table()
        )
    }

    fn start(&self) -> Moat {
        Moat::start(&self.ws, &self.body(""), &["web"])
    }

    /// Swaps the ConfigMap's `..data` link to a new version atomically.
    fn configmap_swap(&self, version: &str, contents: &str) {
        let dir = self.configmap.join(format!("..{version}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("extra.txt"), contents).unwrap();
        let tmp = self.configmap.join("..data_tmp");
        std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
        std::fs::rename(&tmp, self.configmap.join("..data")).unwrap();
    }
}

fn applied(moat: &Moat) -> Vec<Value> {
    moat.events("reload_applied")
}

/// Waits for the reload to `version` and returns its event.
fn wait_applied(moat: &Moat, version: u64) -> Value {
    moat.wait_event("reload_applied", |e| e["new_version"] == version)
}

fn allow_added(e: &Value) -> Vec<String> {
    e["changes"]["access"][0]["allow_added"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

fn tls_echo_once(ws: &Workspace, from: &str, addr: std::net::SocketAddr) -> bool {
    let Ok(mut s) = tls_connect(
        tls_client(&ws.certs, false),
        "localhost",
        connect_from(from, addr),
    ) else {
        return false;
    };
    let mut b = [0u8; 4];
    s.write_all(b"ping").is_ok() && s.read_exact(&mut b).is_ok() && &b == b"ping"
}

#[test]
fn every_file_change_pattern_applies_exactly_one_reload() {
    let setup = Setup::new("127.0.0.1\n");
    let moat = setup.start();
    let clients = &setup.clients;
    let mut version = 1;
    let mut expect = |moat: &Moat, entry: &str| {
        version += 1;
        let e = wait_applied(moat, version);
        assert_eq!(e["trigger"], "file_change");
        assert_eq!(e["old_version"], version - 1);
        assert_eq!(allow_added(&e), [entry], "{e}");
    };

    // 1. Written in place, in two pieces: the half-written file must not
    //    be what gets applied.
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(clients)
            .unwrap();
        f.write_all(b"127.0.0.1\n10.1.0.0/1").unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(30)); // a slow writer, not synchronisation
        f.write_all(b"6\n").unwrap();
    }
    expect(&moat, "10.1.0.0/16");

    // 2. Written to a temporary file and renamed over.
    let tmp = setup.ws.path(".clients.txt.tmp");
    std::fs::write(&tmp, "127.0.0.1\n10.1.0.0/16\n10.2.0.0/16\n").unwrap();
    std::fs::rename(&tmp, clients).unwrap();
    expect(&moat, "10.2.0.0/16");

    // 3. Deleted and recreated.
    std::fs::remove_file(clients).unwrap();
    std::fs::write(
        clients,
        "127.0.0.1\n10.1.0.0/16\n10.2.0.0/16\n10.3.0.0/16\n",
    )
    .unwrap();
    expect(&moat, "10.3.0.0/16");

    // 4. The way vim saves: swap file, backup by rename, new file, cleanup.
    let swap = setup.ws.path(".clients.txt.swp");
    let backup = setup.ws.path("clients.txt~");
    std::fs::write(&swap, "vim swap").unwrap();
    std::fs::rename(clients, &backup).unwrap();
    std::fs::write(
        clients,
        "127.0.0.1\n10.1.0.0/16\n10.2.0.0/16\n10.3.0.0/16\n10.4.0.0/16\n",
    )
    .unwrap();
    std::fs::remove_file(&backup).unwrap();
    std::fs::remove_file(&swap).unwrap();
    expect(&moat, "10.4.0.0/16");

    // 5. Kubernetes ConfigMap: the `..data` symlink swapped atomically.
    setup.configmap_swap("v2", "10.200.0.0/16\n10.201.0.0/16\n");
    expect(&moat, "10.201.0.0/16");

    // Exactly one reload per change, none rejected: a final sentinel edit
    // is applied as the very next version.
    std::fs::write(clients, "127.0.0.1\n").unwrap();
    let last = wait_applied(&moat, version + 1);
    assert_eq!(
        last["changes"]["access"][0]["allow_removed"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    assert_eq!(applied(&moat).len(), 6);
    assert!(
        moat.events("reload_rejected").is_empty(),
        "{:?}",
        moat.events("reload_rejected")
    );
    let policy = moat.admin_get("/policy");
    assert!(policy.contains("\"version\": 7"), "{policy}");
}

#[test]
fn invalid_edits_are_rejected_and_the_old_policy_keeps_serving() {
    let setup = Setup::new("127.0.0.1\n");
    let moat = setup.start();
    let addr = moat.addr("web");
    let ws = &setup.ws;
    let mut live = tls_connect(
        tls_client(&ws.certs, false),
        "localhost",
        connect_from("127.0.0.1", addr),
    )
    .unwrap();
    let round_trip = |s: &mut TlsStream| {
        let mut b = [0u8; 5];
        s.write_all(b"still").unwrap();
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"still");
    };
    let rejected = |n: usize| {
        wait_for("reload_rejected", || {
            let r = moat.events("reload_rejected");
            (r.len() >= n).then(|| r[n - 1].clone())
        })
    };

    // A bad CIDR in the allowlist file.
    std::fs::write(&setup.clients, "127.0.0.1\n10.0.0.0/33\n").unwrap();
    let r = rejected(1);
    assert_eq!(r["trigger"], "file_change");
    assert_eq!(r["version_in_force"], 1);
    let errors = r["errors"].to_string();
    assert!(
        errors.contains(r#"clients.txt:2:1: \"10.0.0.0/33\" is not a valid CIDR"#),
        "{errors}"
    );
    round_trip(&mut live);
    assert!(tls_echo_once(ws, "127.0.0.1", addr));

    // A TOML syntax error in the main file, through POST /reload.
    let main = moat.config.clone();
    let good_main = std::fs::read_to_string(&main).unwrap();
    std::fs::write(&main, good_main.replace("[[device]]", "[[device]")).unwrap();
    wait_for("watcher to reject the broken main file", || {
        (moat.events("reload_rejected").len() >= 2).then_some(())
    });
    let (status, body) = moat.admin_post("/reload");
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("\"result\": \"rejected\"") && body.contains("moat.toml:"),
        "{body}"
    );
    round_trip(&mut live);

    // A broken certificate.
    std::fs::write(&main, &good_main).unwrap();
    std::fs::write(&setup.clients, "127.0.0.1\n").unwrap();
    let good_cert = std::fs::read(&ws.certs.server_cert).unwrap();
    std::fs::write(
        &ws.certs.server_cert,
        "-----BEGIN CERTIFICATE-----\nnot a cert\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let r = moat.wait_event("reload_rejected", |e| {
        e["errors"].to_string().contains("server.pem")
    });
    assert_eq!(r["version_in_force"], 1);
    round_trip(&mut live);
    assert!(
        tls_echo_once(ws, "127.0.0.1", addr),
        "old certificate still served"
    );
    assert!(applied(&moat).is_empty());
    let metrics = moat.admin_get("/metrics");
    assert!(
        metrics.contains(r#"moat_reloads_total{result="rejected"}"#),
        "{metrics}"
    );

    // The next good edit applies normally.
    std::fs::write(&ws.certs.server_cert, good_cert).unwrap();
    std::fs::write(&setup.clients, "127.0.0.1\n127.0.0.2\n").unwrap();
    let e = wait_applied(&moat, 2);
    assert_eq!(allow_added(&e), ["127.0.0.2/32"]);
    round_trip(&mut live);
    // reload_applied is written just before the publish.
    wait_for("127.0.0.2 admitted", || {
        tls_echo_once(ws, "127.0.0.2", addr).then_some(())
    });
}

/// A policy file rewritten in place can be read empty or cut short. None
/// of these reads may switch a listener off or drop a deny entry: each is
/// rejected (audited) and the policy in force keeps serving. A cut-short
/// allowlist only refuses more, and cutting its last entries is how access
/// is revoked: that applies.
#[test]
fn empty_and_cut_short_files_never_widen_access_or_stop_serving() {
    let setup = Setup::new("127.0.0.1\n127.0.0.3\n");
    let blocked = setup.ws.write("blocked.txt", "127.0.0.3\n127.0.0.4\n");
    let second = format!(
        "[[device.service]]\nname = \"plain\"\nprotocol = \"tcp\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\nallow = [\"127.0.0.0/8\"]\nplaintext = true\ndeny = [\"blocked\"]\n\n[networks.blocked]\nfile = \"blocked.txt\"\n",
        setup.echo.addr
    );
    let moat = Moat::start(&setup.ws, &setup.body(&second), &["web", "plain"]);
    let (web, plain) = (moat.addr("web"), moat.addr("plain"));
    let ws = &setup.ws;
    let main = moat.config.clone();
    let good_main = std::fs::read_to_string(&main).unwrap();
    // A refused connection is closed before any byte; an admitted one echoes.
    let refused = |from: &str| {
        let mut s = connect_from(from, plain);
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut b = [0u8; 4];
        let echoed = s.write_all(b"ping").is_ok() && s.read_exact(&mut b).is_ok();
        !echoed
    };
    let rejected = |n: usize| {
        wait_for("reload_rejected", || {
            let r = moat.events("reload_rejected");
            (r.len() >= n).then(|| r[n - 1]["errors"].to_string())
        })
    };
    assert!(refused("127.0.0.3") && refused("127.0.0.4"));

    // Truncated to 0 bytes: refused, not "no devices, stop every listener".
    std::fs::write(&main, "").unwrap();
    let errors = rejected(1);
    assert!(errors.contains("the file is empty"), "{errors}");
    assert!(tls_echo_once(ws, "127.0.0.1", web));

    // Cut exactly at a line end, before the deny list: a valid policy that
    // would admit .3 and .4, but the first bytes of the file in force.
    let cut = &good_main[..good_main.find("deny = [\"blocked\"]").unwrap()];
    std::fs::write(&main, cut).unwrap();
    let errors = rejected(2);
    assert!(errors.contains("looks cut short"), "{errors}");
    std::fs::write(&main, &good_main).unwrap();

    // The deny-set file cut after its first entry, and inside a line
    // ("127.0.0.4" read as "127.0.0."): both rejected.
    std::fs::write(&blocked, "127.0.0.3\n").unwrap();
    let errors = rejected(3);
    assert!(
        errors.contains("blocked.txt: holds only the first 10 of the 20 bytes"),
        "{errors}"
    );
    std::fs::write(&blocked, "127.0.0.3\n127.0.0.").unwrap();
    let errors = rejected(4);
    assert!(
        errors.contains("blocked.txt:2:1: the last line has no newline"),
        "{errors}"
    );
    assert!(applied(&moat).is_empty());
    assert!(refused("127.0.0.3") && refused("127.0.0.4"));
    assert!(tls_echo_once(ws, "127.0.0.3", web));

    // Unblocking .4 as an edit (not a cut) applies.
    std::fs::write(&blocked, "# ward 3\n127.0.0.3\n").unwrap();
    // reload_applied is written just before the publish: wait for it.
    wait_applied(&moat, 2);
    wait_for(".4 admitted", || (!refused("127.0.0.4")).then_some(()));
    assert!(refused("127.0.0.3"));

    // The allowlist's last entry removed: a revocation, applied at once.
    std::fs::write(&setup.clients, "127.0.0.1\n").unwrap();
    wait_applied(&moat, 3);
    wait_for(".3 revoked", || {
        (!tls_echo_once(ws, "127.0.0.3", web)).then_some(())
    });
    assert!(tls_echo_once(ws, "127.0.0.1", web));
}

/// A client that echoes messages through moat until stopped or cut.
struct Streamer {
    stop: Arc<AtomicBool>,
    echoed: Arc<AtomicU64>,
    handle: std::thread::JoinHandle<Result<(), String>>,
    local: std::net::SocketAddr,
}

fn stream_from(ws: &Workspace, from: &str, addr: std::net::SocketAddr) -> Streamer {
    let tcp = connect_from(from, addr);
    let local = tcp.local_addr().unwrap();
    let mut s = tls_connect(tls_client(&ws.certs, false), "localhost", tcp).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let echoed = Arc::new(AtomicU64::new(0));
    let (st, ec) = (stop.clone(), echoed.clone());
    let handle = std::thread::spawn(move || {
        let mut i = 0u64;
        while !st.load(Ordering::Relaxed) {
            let msg = format!("{local}-{i:08}");
            s.write_all(msg.as_bytes())
                .map_err(|e| format!("write {i}: {e}"))?;
            let mut back = vec![0u8; msg.len()];
            s.read_exact(&mut back)
                .map_err(|e| format!("read {i}: {e}"))?;
            if back != msg.as_bytes() {
                return Err(format!("corrupt echo at {i}"));
            }
            ec.fetch_add(msg.len() as u64, Ordering::Relaxed);
            i += 1;
        }
        Ok(())
    });
    Streamer {
        stop,
        echoed,
        handle,
        local,
    }
}

#[test]
fn a_removed_source_is_cut_within_a_second_and_others_keep_flowing() {
    let setup = Setup::new("127.0.0.2\n127.0.0.3\n");
    let moat = setup.start();
    let addr = moat.addr("web");
    let kept = stream_from(&setup.ws, "127.0.0.2", addr);
    let cut = stream_from(&setup.ws, "127.0.0.3", addr);
    wait_for("both streams flowing", || {
        (kept.echoed.load(Ordering::Relaxed) > 0 && cut.echoed.load(Ordering::Relaxed) > 0)
            .then_some(())
    });

    std::fs::write(&setup.clients, "127.0.0.2\n").unwrap();
    let reload = wait_applied(&moat, 2);
    assert_eq!(
        reload["changes"]["access"][0]["allow_removed"],
        serde_json::json!(["127.0.0.3/32"])
    );
    let revoked = moat.wait_for_client("connection_revoked", cut.local);
    assert_eq!(revoked["reason"], "not_allowlisted");
    assert_eq!(revoked["policy_version"], 2);
    let lag = ms(&revoked["ts"]) - ms(&reload["ts"]);
    assert!(
        (0..1000).contains(&lag),
        "revoked {lag} ms after the reload"
    );
    let closed = moat.wait_for_client("connection_closed", cut.local);
    assert_eq!(closed["closed_by"], "revoked");
    let result = cut.handle.join().unwrap();
    assert!(result.is_err(), "the revoked stream must be cut");

    // The .2 stream is untouched: still flowing, never closed.
    let before = kept.echoed.load(Ordering::Relaxed);
    wait_for("the kept stream to keep echoing", || {
        (kept.echoed.load(Ordering::Relaxed) > before + 10_000).then_some(())
    });
    kept.stop.store(true, Ordering::Relaxed);
    assert_eq!(kept.handle.join().unwrap(), Ok(()));
    assert!(moat
        .events("connection_revoked")
        .iter()
        .all(|e| e["client"] != kept.local.to_string()));
}

/// Milliseconds of an RFC 3339 `...THH:MM:SS.mmmZ` timestamp within its day.
fn ms(ts: &Value) -> i64 {
    let t = ts.as_str().unwrap();
    let time = &t[11..t.len() - 1];
    let parts: Vec<f64> = time.split(':').map(|p| p.parse().unwrap()).collect();
    ((parts[0] * 3600.0 + parts[1] * 60.0 + parts[2]) * 1000.0).round() as i64
}

#[test]
fn a_hundred_reloads_under_load_lose_no_byte_and_fail_no_connection() {
    let setup = Setup::new("127.0.0.0/29\n");
    let moat = setup.start();
    let addr = moat.addr("web");
    let streams: Vec<Streamer> = ["127.0.0.1", "127.0.0.2"]
        .iter()
        .map(|s| stream_from(&setup.ws, s, addr))
        .collect();

    // New connections keep opening throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let opener = {
        let stop = stop.clone();
        let certs = setup.ws.certs.clone();
        std::thread::spawn(move || {
            let cfg = tls_client(&certs, false);
            let (mut ok, mut failed) = (0u32, 0u32);
            while !stop.load(Ordering::Relaxed) {
                let good = tls_connect(cfg.clone(), "localhost", connect_from("127.0.0.4", addr))
                    .and_then(|mut s| {
                        let mut b = [0u8; 3];
                        s.write_all(b"new")?;
                        s.read_exact(&mut b)?;
                        Ok(&b == b"new")
                    })
                    .unwrap_or(false);
                if good {
                    ok += 1
                } else {
                    failed += 1
                }
            }
            (ok, failed)
        })
    };

    for i in 0..100u32 {
        // Each reload really changes the policy: one more harmless entry.
        let mut text = String::from("127.0.0.0/29\n");
        for j in 0..=i {
            text.push_str(&format!("10.99.{}.{}/32\n", j / 250, j % 250));
        }
        // Renamed into place: the watcher may read at any moment, and an
        // in-place write can be read empty (which is rejected).
        let tmp = setup.ws.path(".clients.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &setup.clients).unwrap();
        let (status, body) = moat.admin_post("/reload");
        assert_eq!(status, 200, "{body}");
    }
    let last = wait_for("the 100th reload", || {
        let a = applied(&moat);
        (a.len() >= 100 && a.iter().any(|e| allow_added(e) == ["10.99.0.99/32"])).then_some(a.len())
    });
    assert_eq!(last, 100, "each edit is applied exactly once");

    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = opener.join().unwrap();
    assert_eq!(failed, 0, "{ok} new connections succeeded, {failed} failed");
    assert!(ok > 0);
    for s in streams {
        s.stop.store(true, Ordering::Relaxed);
        assert_eq!(s.handle.join().unwrap(), Ok(()));
        assert!(s.echoed.load(Ordering::Relaxed) > 0);
    }
    assert!(moat.events("connection_revoked").is_empty());
    let rejected = moat.events("reload_rejected");
    assert!(rejected.is_empty(), "{rejected:?}");
}

fn leaf_fingerprint(s: &TlsStream) -> Vec<u8> {
    s.conn.peer_certificates().unwrap()[0].as_ref().to_vec()
}

#[test]
fn rotated_certificates_serve_new_handshakes_and_keep_live_sessions() {
    let setup = Setup::new("127.0.0.1\n");
    let moat = setup.start();
    let addr = moat.addr("web");
    let ws = &setup.ws;
    let mut old = tls_connect(
        tls_client(&ws.certs, false),
        "localhost",
        connect_from("127.0.0.1", addr),
    )
    .unwrap();
    let old_leaf = leaf_fingerprint(&old);

    // A new pair from a new CA, moved into place by rename (as cert-manager
    // or an ops script would).
    let fresh = moat::certs::write_dev_set(&ws.path("fresh")).unwrap();
    replace_by_rename(&fresh.server_key, &ws.certs.server_key);
    replace_by_rename(&fresh.server_cert, &ws.certs.server_cert);
    let e = wait_applied(&moat, 2);
    assert_eq!(
        e["changes"]["services_changed"],
        serde_json::json!(["pump/web"])
    );

    let new = tls_connect(
        tls_client(&fresh, false),
        "localhost",
        connect_from("127.0.0.1", addr),
    )
    .unwrap();
    assert_ne!(
        leaf_fingerprint(&new),
        old_leaf,
        "new handshakes get the new certificate"
    );
    let mut b = [0u8; 3];
    old.write_all(b"old").unwrap();
    old.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"old", "the established session continues");
}

fn replace_by_rename(from: &Path, to: &Path) {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

#[test]
fn sighup_adds_and_removes_listeners_and_revokes_removed_services() {
    let setup = Setup::new("127.0.0.1\n");
    let moat = setup.start();
    let web = moat.addr("web");
    let live = stream_from(&setup.ws, "127.0.0.1", web);
    wait_for("stream flowing", || {
        (live.echoed.load(Ordering::Relaxed) > 0).then_some(())
    });

    // Add a plaintext service alongside; SIGHUP applies it.
    let added = format!(
        "[[device.service]]\nname = \"hl7\"\nprotocol = \"tcp\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\nallow = [\"clients\"]\nplaintext = true\n",
        setup.echo.addr
    );
    let path = setup.ws.path("moat.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    // Write elsewhere and rename, so the watcher sees a single atomic change;
    // SIGHUP may race it, and whichever comes second finds nothing new.
    let tmp = setup.ws.path("moat.toml.new");
    std::fs::write(&tmp, format!("{text}\n{added}")).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    signal(moat.pid(), "HUP");
    let e = wait_applied(&moat, 2);
    assert_eq!(
        e["changes"]["services_added"],
        serde_json::json!(["pump/hl7"])
    );
    let started = moat.wait_event("listener_started", |e| e["service"] == "hl7");
    let hl7: std::net::SocketAddr = started["listen"].as_str().unwrap().parse().unwrap();
    let mut s = connect_from("127.0.0.1", hl7);
    s.write_all(b"MSH|").unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();

    // Remove the TLS service: its listener stops and its connection is cut.
    let only_hl7 = format!("{text}\n{added}").replace(&setup.ws.tls_table(), "");
    let only_hl7 = remove_service(&only_hl7, "web");
    std::fs::write(&tmp, only_hl7).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let e = wait_applied(&moat, 3);
    assert_eq!(
        e["changes"]["services_removed"],
        serde_json::json!(["pump/web"])
    );
    moat.wait_event("listener_stopped", |e| e["service"] == "web");
    let revoked = moat.wait_for_client("connection_revoked", live.local);
    assert_eq!(revoked["reason"], "service_removed");
    assert!(live.handle.join().unwrap().is_err());
    wait_for("the removed port to refuse", || {
        std::net::TcpStream::connect(web).is_err().then_some(())
    });
    // The kept service was not disturbed.
    s.write_all(b"PID|").unwrap();
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"PID|");
}

/// Drops the `[[device.service]]` block named `name` from a config text.
fn remove_service(text: &str, name: &str) -> String {
    let blocks: Vec<&str> = text.split("[[device.service]]").collect();
    let mut out = blocks[0].to_string();
    for b in &blocks[1..] {
        if !b.contains(&format!("name = \"{name}\"")) {
            out.push_str("[[device.service]]");
            out.push_str(b);
        }
    }
    out
}

#[test]
fn raising_min_version_cuts_older_sessions_only() {
    let setup = Setup::new("127.0.0.1\n");
    let moat = setup.start();
    let addr = moat.addr("web");
    // A TLS 1.2-only client next to a default (TLS 1.3) one.
    let mut roots = rustls::RootCertStore::empty();
    for c in moat::tls::load_certs(&setup.ws.certs.ca).unwrap() {
        roots.add(c).unwrap();
    }
    let tls12 = Arc::new(
        rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS12])
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let mut old = tls_connect(tls12, "localhost", connect_from("127.0.0.1", addr)).unwrap();
    let old_addr = old.sock.local_addr().unwrap();
    let mut new = tls_connect(
        tls_client(&setup.ws.certs, false),
        "localhost",
        connect_from("127.0.0.1", addr),
    )
    .unwrap();
    for s in [&mut old, &mut new] {
        let mut b = [0u8; 2];
        s.write_all(b"hi").unwrap();
        s.read_exact(&mut b).unwrap();
    }
    assert_eq!(
        moat.wait_for_client("connection_allowed", old_addr)["tls"]["version"],
        "TLSv1.2"
    );

    let path = setup.ws.path("moat.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let raised = text.replacen(
        "[device.service.tls]\n",
        "[device.service.tls]\nmin_version = \"1.3\"\n",
        1,
    );
    let tmp = setup.ws.path("moat.toml.new");
    std::fs::write(&tmp, raised).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    wait_applied(&moat, 2);
    let revoked = moat.wait_for_client("connection_revoked", old_addr);
    assert_eq!(revoked["reason"], "tls_policy_changed");
    // The TLS 1.3 session is untouched.
    let mut b = [0u8; 5];
    new.write_all(b"still").unwrap();
    new.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"still");
}
